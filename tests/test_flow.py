"""The prune-adapt flow end to end on the quick profile, under a throwaway Prefect server."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PARAMS, ROOT, quick_overrides


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def test_flow_trains_evaluates_and_tracks(prefect_harness, tiny_domains, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.prune_adapt import prune_adapt

    overrides = quick_overrides(tmp_path, tiny_domains, "pretrain.model=osnet_x0_25", "pretrain.ids_per_batch=2",
                                 "prune.finetune.ids_per_batch=2")
    summary = prune_adapt(profile="quick", overrides=overrides, params=str(PARAMS))

    assert set(summary) == {"unpruned", "pruned"}
    for result in summary.values():
        for domain in ("source", "target"):
            metrics = result[domain]
            assert 0.0 <= metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"] <= 1.0
            assert 0.0 < metrics["mAP"] <= 1.0 and 0.0 < metrics["mINP"] <= 1.0
    reduction = 1 - summary["pruned"]["cost"]["flops"] / summary["unpruned"]["cost"]["flops"]
    assert abs(reduction - 0.5) <= 0.02
    assert summary["pruned"]["cost"]["params"] < summary["unpruned"]["cost"]["params"]
    outputs = tmp_path / "outputs"
    assert json.loads((outputs / "metrics.json").read_text()) == summary
    assert (outputs / "pretrain" / "model.pt").is_file() and (outputs / "prune" / "model.pt").is_file()
    history = json.loads((outputs / "pretrain" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reid-prune")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["pretrain.model"] == "osnet_x0_25"
    assert run.data.metrics["pruned.target.rank1"] == pytest.approx(summary["pruned"]["target"]["rank1"])
    assert run.data.metrics["pruned.flops"] == summary["pruned"]["cost"]["flops"]
    assert run.data.params["prune.criterion"] == "plfp"
    epochs = client.get_metric_history(run.info.run_id, "pretrain.loss")
    assert [m.step for m in epochs] == [1, 2]


def test_bad_settings_fail_before_any_work(tmp_path):
    """The CLI stops with the key path and leaves nothing behind."""
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--profile", "quick", "-S", "pretrain.epochs=-3",
         "-S", f"outputs={tmp_path / 'out'}", "--params", str(PARAMS)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert "pretrain.epochs" in result.stdout and "-3" in result.stdout
    assert not (tmp_path / "out").exists()


def test_missing_dataset_fails_with_the_path_and_the_fix(tmp_path):
    from reid_models.config import load_settings
    from reid_models.data.readers import DataError
    from reid_models.stages import load_domain

    settings = load_settings(PARAMS, overrides=[f"data.target.path={tmp_path / 'nowhere'}", "data.target.kind=market1501"])
    with pytest.raises(DataError, match="nowhere"):
        load_domain(settings.data.target, settings.data, seed=0)


def test_run_command_prints_the_metrics_table(tiny_domains, tmp_path):
    """`reid-prune run` as a user types it (quick profile, outputs in tmp_path)."""
    overrides = quick_overrides(tmp_path, tiny_domains, "pretrain.model=osnet_x0_25", "pretrain.ids_per_batch=2",
                                "prune.finetune.ids_per_batch=2", "prune.finetune.epochs=1")
    command = [sys.executable, "-m", "flows.cli", "run", "--profile", "quick", "--params", str(PARAMS)]
    for override in overrides:
        command += ["-S", override]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ReID metrics" in result.stdout and "pruned" in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    assert (tmp_path / "outputs" / "metrics.json").is_file()
