"""Stopping when asked: SIGINT/SIGTERM stop the work at the next batch, mark the MLflow runs KILLED,
crash the Prefect flow run, exit 130/143, keep what was finished, and the same command resumes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest
import torch

from reid_models import signals
from tests.conftest import PARAMS, ROOT, alive, child_pids
from tests.test_resume import interruptible_run
from tests.test_train import SETTINGS, tiny_train_set


@pytest.fixture(autouse=True)
def no_stop_left_behind():
    signals.reset()
    yield
    signals.reset()


def test_training_stops_at_the_next_batch_and_keeps_the_last_epoch(tiny_domains, tmp_path):
    from reid_models.models import ReIDNet
    from reid_models.train import train_model

    images = tiny_train_set(tiny_domains)
    checkpoint = tmp_path / "last.pt"
    torch.manual_seed(0)
    model = ReIDNet("osnet_x0_25", int(images.labels.max()) + 1)
    # The stop arrives during epoch 2 (as a signal handler would set it): epoch 1 stays saved.
    ask_to_stop = lambda record: signals.request_stop(signal.SIGTERM)  # noqa: E731
    with pytest.raises(signals.StopRequested, match="SIGTERM"):
        train_model(model, images, SETTINGS, torch.device("cpu"), checkpoint_path=checkpoint, on_epoch=ask_to_stop,
                    progress=False)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
    assert signals.exit_code(signal.SIGINT) == 130 and signals.exit_code(signal.SIGTERM) == 143


def test_a_stopped_mlflow_run_is_killed_and_a_failed_one_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    from reid_models.config import load_settings
    from tasks.tracking import tracked_run

    settings = load_settings(PARAMS, "quick", [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                                f"tracking.artifact_root={tmp_path / 'artifacts'}"])
    with pytest.raises(signals.StopRequested):
        with tracked_run(settings, "stopped"):
            raise signals.StopRequested(signal.SIGINT)
    with pytest.raises(ValueError):
        with tracked_run(settings, "broken"):
            raise ValueError("a real failure")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.run_name: r.info.status for r in runs} == {"stopped": "KILLED", "broken": "FAILED"}




# Ctrl-C in a terminal sends SIGINT to the whole foreground process group (the command and every
# child it started); a supervisor's SIGTERM goes to the command alone.
@pytest.mark.parametrize("signal_number, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["SIGINT-to-the-process-group", "SIGTERM-to-the-command"])
def test_a_signal_stops_the_pipeline_within_seconds_and_the_same_command_resumes(tiny_domains, tmp_path,
                                                                                  signal_number, to_group):
    from mlflow.tracking import MlflowClient

    command, env, epoch_checkpoint = interruptible_run(tmp_path, tiny_domains)
    outputs = tmp_path / "outputs"

    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # its own process group, as a terminal's foreground job
    deadline = time.monotonic() + 600
    while not epoch_checkpoint.is_file():  # adapt_only is training: stop it mid-scenario
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.2)
    server = [pid for pid in child_pids(first.pid) if "uvicorn" in open(f"/proc/{pid}/cmdline").read()]
    sent = time.monotonic()
    os.killpg(first.pid, signal_number) if to_group else first.send_signal(signal_number)
    try:
        stdout, stderr = first.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(first.pid, signal.SIGKILL)  # leave nothing behind
        pytest.fail("the run did not end within 60 s of the signal")
    assert time.monotonic() - sent < 10, "it did not stop within 10 s"
    assert first.returncode == 128 + signal_number, stdout[-2000:] + stderr[-2000:]
    assert f"stopped ({signal.Signals(signal_number).name})" in stdout and "Run the same command again" in stdout
    assert "Traceback" not in stdout + stderr
    assert "terminate called" not in stderr, stderr[-2000:]  # no C++ abort of a thread left at exit
    assert "probe (" in stdout and "estimate: " in stdout  # before the long work starts
    assert "progress: stage 3/4 (scenarios), scenario 1/2 done" in stderr  # source_only finished first
    assert server and not alive(server[0])  # the temporary Prefect server went with it
    assert not list(outputs.rglob(".*.tmp")) and epoch_checkpoint.is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("reid-prune ")]
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert statuses == {"prune-adapt-quick": "KILLED", "adapt_only-none-0-supervised-seed0": "KILLED",
                        "source_only-none-0-none-seed0": "FINISHED"}
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:  # prune-adapt and its scenario-grid subflow
        flow_states = [state for (state,) in db.execute("SELECT state_type FROM flow_run")]
    assert flow_states and set(flow_states) <= {"CRASHED", "CANCELLED"}

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming from" in again.stderr and "last.pt" in again.stderr
