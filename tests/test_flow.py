"""The prune-adapt flow end to end on the quick profile, under a throwaway Prefect server."""

import json
import os
import subprocess
import sys

import pytest

import pandas as pd

from tests.conftest import PARAMS, ROOT, quick_overrides

# The tiny domains have 4 training identities: batches of 2 identities, a small fast backbone.
TINY = ("pretrain.model=osnet_x0_25", "pretrain.ids_per_batch=2", "prune.finetune.ids_per_batch=2",
        "adapt.train.ids_per_batch=2")


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # 30 s by default: too short on a busy 2-core machine
        yield


def test_flow_runs_every_scenario_with_equal_budgets_and_tracks_them(prefect_harness, tiny_domains, tmp_path):
    from pathlib import Path

    import numpy as np
    import torch
    import yaml
    from mlflow.tracking import MlflowClient

    from reid_models.export import OnnxModule
    from reid_models.stages import load_model

    from flows.prune_adapt import prune_adapt, settings_for
    from reid_models.config import SCENARIO_NAMES
    from reid_models.scenarios import images_budget

    overrides = quick_overrides(tmp_path, tiny_domains, *TINY, "ship.quantize=[int8_ptq,none]")
    result = prune_adapt(profile="quick", overrides=overrides, params=str(PARAMS))
    rows = {(r["name"], r["adaptation"]): r for r in result["rows"]}

    assert {name for name, _ in rows} == set(SCENARIO_NAMES)
    assert len(rows) == 1 + 6 * 2  # source_only has no adaptation; the rest run supervised and unsupervised
    settings = settings_for("quick", overrides, str(PARAMS))
    budget = images_budget(settings)
    short = budget * (settings.scenarios.epochs - settings.scenarios.prune_epochs) // settings.scenarios.epochs
    unpruned = rows[("adapt_only", "supervised")]
    for (name, adaptation), row in rows.items():
        assert 0.0 <= row["rank1"] <= row["rank5"] <= row["rank10"] <= 1.0
        assert 0.0 < row["mAP"] <= 1.0 and 0.0 < row["mINP"] <= 1.0 and row["latency_ms"] > 0
        expected = {"source_only": 0, "adapt_short": short}.get(name, budget)  # adapt_short: the before/after
        assert row["images_seen"] == expected, (name, adaptation)           # scenarios' adaptation epochs
        assert (row["train_gflops"] > 0) == (name != "source_only")
        if name in ("prune_before", "prune_during", "prune_after", "small_dense"):
            # The pruning budget lands within 2 points; the uniformly thinned dense net within 5.
            tolerance = 0.05 if name == "small_dense" else 0.02
            assert abs(1 - row["flops"] / unpruned["flops"] - 0.5) <= tolerance, (name, adaptation)
            assert row["params"] < unpruned["params"]
        else:
            assert row["flops"] == unpruned["flops"]

    report = tmp_path / "outputs" / "report"
    frame = pd.read_parquet(report / "results.parquet")
    assert len(frame) == len(rows) and frame["pareto"].any()
    assert (report / "flops_vs_rank1.png").stat().st_size > 10_000
    assert set(json.loads((report / "metrics.json").read_text())) == {
        f"{r['name']}-{r['criterion']}-{r['flops_reduction']:g}-{r['adaptation']}-seed0" for r in rows.values()}

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reid-prune synthetic:source->synthetic:target")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == len(rows)
    assert all(child.info.status == "FINISHED" for child in children)
    child = next(c for c in children if c.data.params["scenario"] == "prune_during"
                 and c.data.params["adaptation"] == "supervised")
    assert child.data.metrics["rank1"] == pytest.approx(rows[("prune_during", "supervised")]["rank1"])
    assert len(client.get_metric_history(child.info.run_id, "train.loss")) == 2  # one point per epoch
    assert {"git_commit", "data_dvc_md5", "profile"} <= set(child.data.tags)
    # The recovery it ran with: teacher, training compute with the teacher's forwards, the ablation settings.
    # (The default recovery, chosen on validation, has no teacher; tests/test_recovery.py runs one.)
    assert child.data.params["teacher"] == "none" and child.data.params["prune.distill"] == "False"
    assert child.data.params["recovery"].startswith("legacy, no distill")
    assert child.data.metrics["train_gflops"] == pytest.approx(rows[("prune_during", "supervised")]["train_gflops"])
    logged = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"model", "cmc.png", "result.json", "pruning"} <= logged
    model_files = {a.path.removeprefix("model/") for a in client.list_artifacts(child.info.run_id, "model")}
    assert {"model.pt", "architecture.json", "MLmodel", "model.onnx", "model.json", "model.int8.onnx"} <= model_files
    # As shipped (int8 ONNX under ONNX Runtime): scored, timed, smaller, in the report and the child run.
    shipped = rows[("prune_during", "supervised")]
    assert shipped["shipped_as"] == "onnx int8_ptq" and 0.0 <= shipped["shipped_rank1"] <= 1.0
    # (OSNet x0.25 is so small that the graph, not its weights, fills most of the file: test_export checks 1/3)
    assert shipped["shipped_size_bytes"] < shipped["onnx_fp32_size_bytes"] and shipped["shipped_latency_ms"] > 0
    assert child.data.metrics["shipped_rank1"] == pytest.approx(shipped["shipped_rank1"])
    assert frame["shipped_rank1"].notna().all()
    # ship.quantize's second choice (the fp32 ONNX file): a row per model and choice in shipped.csv,
    # its own metrics and files in the child run; the fp32 file ranks as the PyTorch model does.
    variants = pd.read_csv(report / "shipped.csv")
    assert sorted(variants["shipped_as"].value_counts().items()) == [("onnx fp32", len(rows)), ("onnx int8_ptq", len(rows))]
    fp32 = variants[variants["shipped_as"] == "onnx fp32"]
    assert (fp32["shipped_size_bytes"] == fp32["onnx_fp32_size_bytes"]).all()
    assert (fp32["shipped_rank1"] - fp32["pytorch_rank1"]).abs().mean() < 0.01
    int8 = variants[variants["shipped_as"] == "onnx int8_ptq"]
    assert (int8["shipped_size_bytes"] < int8["onnx_fp32_size_bytes"]).all()
    assert child.data.metrics["ship.none.rank1"] == pytest.approx(float(
        fp32[(fp32["scenario"] == "prune_during") & (fp32["adaptation"] == "supervised")]["shipped_rank1"].iloc[0]))
    assert "shipped/none/model.onnx" in {a.path for a in client.list_artifacts(child.info.run_id, "shipped/none")}
    # The ONNX file is MLflow's onnx flavour and computes the PyTorch model's features.
    served = Path(client.download_artifacts(child.info.run_id, "model", str(tmp_path / "served")))
    assert "onnx" in yaml.safe_load((served / "MLmodel").read_text())["flavors"]
    pruned = load_model(served / "model.pt").eval()
    images = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        expected = pruned(images).numpy()
    assert np.abs(OnnxModule(served / "model.onnx")(images).numpy() - expected).max() <= 1e-4

    # Every final model is a registry version; each budget's alias names its best rank-1.
    versions = client.search_model_versions("name = 'reid-prune'")
    assert len(versions) == len(rows)
    for adaptation in ("supervised", "unsupervised"):
        best = client.get_model_version_by_alias("reid-prune", f"best-flops50-{adaptation}")
        pruned = [r for (name, a), r in rows.items() if a == adaptation and r["flops_reduction"] == 0.5]
        assert best.tags["scenario"] == max(pruned, key=lambda r: r["rank1"])["key"]


def test_the_thin_network_pretrains_beside_the_source_model(prefect_harness, tiny_domains, tmp_path, monkeypatch):
    """With two workers, small_dense's thin network trains while the source model trains (their
    training intervals overlap), and the grid then reuses it instead of training it again."""
    import threading
    import time

    import torch
    from prefect import flow

    import reid_models.scenarios
    import reid_models.stages
    from flows.prune_adapt import pretrain_side_by_side, settings_for

    intervals, lock, real = [], threading.Lock(), reid_models.stages.pretrain

    def timed_pretrain(*args, **kwargs):
        began = time.monotonic()
        result = real(*args, **kwargs)
        with lock:
            intervals.append((began, time.monotonic()))
        return result

    monkeypatch.setattr(reid_models.stages, "pretrain", timed_pretrain)  # the source model's
    monkeypatch.setattr(reid_models.scenarios, "pretrain", timed_pretrain)  # the thin network's
    settings = settings_for("quick", quick_overrides(tmp_path, tiny_domains, *TINY, "orchestration.workers=2",
                                                     "orchestration.torch_threads=1",
                                                     "scenarios.names=[small_dense]"), str(PARAMS))

    @flow
    def pretraining():
        return pretrain_side_by_side(settings, None)

    source = pretraining()
    assert os.path.isfile(source)
    assert (tmp_path / "outputs" / "scenarios" / "small_dense_source_0.5" / "model.pt").is_file()
    assert len(intervals) == 2
    (first_began, first_ended), (second_began, _) = sorted(intervals)
    assert second_began < first_ended, "the two pretrainings ran one after the other"
    # ... and the source model is the one it would be alone (building the thin network beside it
    # draws from torch's process-wide RNG, which initialises the source model)
    alone = real(settings, tmp_path / "alone")["checkpoint"]
    side_by_side, by_itself = (torch.load(path, weights_only=True)["state_dict"] for path in (source, alone))
    assert all(torch.equal(side_by_side[key], by_itself[key]) for key in by_itself)


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
        load_domain(settings.data.target, settings.data)


def test_run_command_prints_the_metrics_table(tiny_domains, tmp_path):
    """`reid-prune run` as a user types it (quick profile, outputs in tmp_path)."""
    overrides = quick_overrides(tmp_path, tiny_domains, *TINY, "scenarios.names=[source_only,prune_during]",
                                "scenarios.adaptation=[supervised]")
    command = [sys.executable, "-m", "flows.cli", "run", "--profile", "quick", "--params", str(PARAMS)]
    for override in overrides:
        command += ["-S", override]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Where to prune" in result.stdout and "prune_during" in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    assert (tmp_path / "outputs" / "report" / "results.csv").is_file()

    again = subprocess.run([sys.executable, "-m", "flows.cli", "report", "--profile", "quick", "--params", str(PARAMS),
                            *(arg for o in overrides for arg in ("-S", o))],
                           capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert again.returncode == 0 and "source_only" in again.stdout and "flops_vs_rank1.png" in again.stdout
