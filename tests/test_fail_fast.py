"""Fail fast and whole: bad inputs stop `run` in its first seconds with one line, before any work;
a file that is not a checkpoint gets our line, never torch's advice to load it unsafely; a failed
required piece cancels the work beside it; a failed scenario leaves the others' results and a
non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from reid_models import signals
from tests.conftest import PARAMS, ROOT, quick_overrides
from tests.test_flow import TINY

CLI = [sys.executable, "-m", "flows.cli"]
TORCH_ADVICE = ("weights_only=False", "Please file an issue", "WeightsUnpickler", "Traceback")


@pytest.fixture(autouse=True)
def no_stop_left_behind():
    signals.reset()
    yield
    signals.reset()


def _cli(*args: str, tmp_path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    began = time.monotonic()
    result = subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - began


def _within_seconds_of_start() -> float:
    """The bound for "ends at once": 10 s, or, on a machine so loaded that importing the libraries
    alone takes longer, 6 s more than that import (what ends the run is then the machine, not work)."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, torchreid, pydantic"], capture_output=True, timeout=300)
    return max(10.0, time.monotonic() - began + 6.0)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith("log: ")]
    assert result.returncode == 2 and len(lines) == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert not any(text in result.stdout + result.stderr for text in TORCH_ADVICE), result.stdout + result.stderr
    return lines[0]


def _run_args(tmp_path, *overrides: str) -> list[str]:
    # Both domains point at folders that do not exist yet: a run that got past its checks would render them.
    settings = [f"outputs={tmp_path / 'outputs'}", f"data.source.path={tmp_path / 'data' / 'source'}",
                f"data.target.path={tmp_path / 'data' / 'target'}", *overrides]
    return ["run", "--profile", "quick", "--probe-seconds", "0", *(a for s in settings for a in ("-S", s))]


def test_a_text_file_as_pretrain_init_ends_run_at_once_with_one_line(tmp_path):
    weights = tmp_path / "resnet18.pth"
    weights.write_text("these are not weights\n")
    result, seconds = _cli(*_run_args(tmp_path, f"pretrain.init={weights}"), tmp_path=tmp_path)
    line = _one_error_line(result)
    assert line.startswith("error: not a PyTorch checkpoint:") and str(weights) in line and "pretrain.init" in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "outputs").exists()  # nothing rendered or written
    print(f"bad pretrain.init: exit {result.returncode} after {seconds:.1f} s")
    assert seconds < _within_seconds_of_start()


def test_weights_of_another_network_are_refused_before_any_work(tmp_path):
    from reid_models.models import ReIDNet

    weights = tmp_path / "osnet.pth"
    torch.save(ReIDNet("osnet_x0_25", num_classes=3).backbone.state_dict(), weights)  # quick trains resnet18
    result, _ = _cli(*_run_args(tmp_path, f"pretrain.init={weights}"), tmp_path=tmp_path)
    line = _one_error_line(result)
    assert "does not fit resnet18" in line and str(weights) in line
    assert not (tmp_path / "data").exists()


def test_a_manifest_without_camid_fails_before_the_source_domain_is_rendered(tmp_path):
    manifest = tmp_path / "cameras.csv"
    manifest.write_text("path,pid\nimages/a.jpg,1\n")
    result, seconds = _cli(*_run_args(tmp_path, "data.target.kind=csv", f"data.target.path={manifest}"),
                           tmp_path=tmp_path)
    line = _one_error_line(result)
    assert "data.target.path" in line and str(manifest) in line and "missing column 'camid'" in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "outputs").exists()
    print(f"manifest without camid: exit {result.returncode} after {seconds:.1f} s")
    assert seconds < _within_seconds_of_start()


def test_a_manifest_naming_missing_images_fails_naming_one(tmp_path):
    from tests.conftest import write_csv_domain

    manifest = write_csv_domain(tmp_path / "cams", ids=6)
    missing = sorted((tmp_path / "cams").glob("*.png"))[3]
    missing.unlink()
    result, _ = _cli(*_run_args(tmp_path, "data.target.kind=csv", f"data.target.path={manifest}"), tmp_path=tmp_path)
    line = _one_error_line(result)
    assert str(missing) in line and "missing" in line


def test_an_unwritable_outputs_folder_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result, _ = _cli(*_run_args(tmp_path, f"outputs={blocker / 'outputs'}"), tmp_path=tmp_path)
    line = _one_error_line(result)
    assert line.startswith("error: outputs:") and str(blocker) in line


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_files_that_are_not_checkpoints_get_one_line_of_ours(command, tmp_path):
    from pathlib import Path

    text, pickled = tmp_path / "notes.pt", tmp_path / "pickled.pt"
    text.write_text("a text file\n")
    torch.save({"state_dict": {}, "extra": Path("x")}, pickled)  # a pickled object: the safe load refuses it
    out = ["--out", str(tmp_path / "exported")] if command == "export" else []
    result, _ = _cli(command, str(text), *out, tmp_path=tmp_path)
    assert _one_error_line(result) == f"error: not a PyTorch checkpoint: {text} (checkpoint; it is neither a " \
                                      "torch.save zip archive nor a legacy torch file); give a .pt file written by torch.save"
    result, _ = _cli(command, str(pickled), *out, tmp_path=tmp_path)
    assert "holds Python objects besides tensors" in _one_error_line(result)
    assert not (tmp_path / "exported").exists()


# --- inside the flow: a required piece that fails cancels its neighbours; a failed scenario does not


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _mlflow_runs(tmp_path) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {r.info.run_name: r.info.status for r in runs}


def test_failed_pretraining_cancels_the_thin_network_beside_it_within_seconds(prefect_harness, tiny_domains,
                                                                             tmp_path, monkeypatch):
    """With 2 workers the thin network pretrains beside the source model; when the source model's
    pretraining fails (here: on purpose, once the thin network has finished an epoch; the thin one
    trains for real), the thin one stops at its next batch and the flow raises the error."""
    from flows.prune_adapt import prune_adapt
    from reid_models import stages
    from reid_models.checkpoint import CheckpointError

    failed_at = {}

    def source_fails_once_the_thin_network_trains(settings, out_dir, on_epoch=None):
        thin_epochs = list((tmp_path / "outputs" / "scenarios").glob("small_dense_source_*/last.pt"))
        deadline = time.monotonic() + 300
        while not thin_epochs and time.monotonic() < deadline:
            time.sleep(0.2)
            thin_epochs = list((tmp_path / "outputs" / "scenarios").glob("small_dense_source_*/last.pt"))
        assert thin_epochs, "the thin network never finished an epoch"
        failed_at["time"] = time.monotonic()
        raise CheckpointError("pretraining failed on purpose (test)")

    monkeypatch.setattr(stages, "pretrain", source_fails_once_the_thin_network_trains)
    overrides = quick_overrides(tmp_path, tiny_domains, *TINY, "orchestration.workers=2",
                                "orchestration.torch_threads=1", "pretrain.epochs=200",
                                "scenarios.names=[small_dense]", "scenarios.adaptation=[supervised]")
    with pytest.raises(CheckpointError, match="on purpose"):
        prune_adapt(profile="quick", overrides=overrides, params=str(PARAMS))
    seconds = time.monotonic() - failed_at["time"]
    print(f"failed pretraining: the flow ended {seconds:.1f} s after the failure")
    assert seconds < 10
    thin = next((tmp_path / "outputs" / "scenarios").glob("small_dense_source_*"))
    assert not (thin / "model.pt").exists()  # cut short, not trained to the end
    assert _mlflow_runs(tmp_path) == {"prune-adapt-quick": "FAILED"}


def test_a_failed_scenario_leaves_the_others_reported_and_exits_non_zero(prefect_harness, tiny_domains, tmp_path,
                                                                        monkeypatch):
    from prefect.settings import PREFECT_API_URL
    from typer.testing import CliRunner

    from flows.cli import app
    from reid_models import scenarios

    real_run = scenarios.run_scenario

    def prune_during_breaks(scenario, *args, **kwargs):
        if scenario.name == "prune_during":
            raise RuntimeError("a scenario broke on purpose (test)")
        return real_run(scenario, *args, **kwargs)

    monkeypatch.setattr(scenarios, "run_scenario", prune_during_breaks)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the harness's server, not a temporary one
    overrides = quick_overrides(tmp_path, tiny_domains, *TINY, "pretrain.epochs=1",
                                "scenarios.names=[source_only,prune_during]", "scenarios.adaptation=[supervised]")
    result = CliRunner().invoke(app, ["run", "--profile", "quick", "--params", str(PARAMS), "--probe-seconds", "0",
                                      *(a for o in overrides for a in ("-S", o))])
    assert result.exit_code == 1, result.output[-3000:]
    assert "1 scenario(s) failed (prune_during-plfp-0.5-supervised-seed0: a scenario broke on purpose (test))" \
        in result.output
    assert "source_only" in result.output  # the finished scenario's row is printed
    report = tmp_path / "outputs" / "report"
    assert json.loads((report / "failed.json").read_text()) == [
        {"scenario": "prune_during-plfp-0.5-supervised-seed0", "error": "a scenario broke on purpose (test)"}]
    assert "source_only" in (report / "results.csv").read_text()
    runs = _mlflow_runs(tmp_path)
    assert runs["prune-adapt-quick"] == "FAILED" and runs["prune_during-plfp-0.5-supervised-seed0"] == "FAILED"
    assert runs["source_only-none-0-none-seed0"] == "FINISHED"
