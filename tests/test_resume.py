"""Faults: a pipeline killed with SIGKILL in the middle of a scenario (its temporary Prefect server
goes with it), then run again."""

import os
import signal
import subprocess
import sys
import time

from tests.conftest import PARAMS, ROOT, alive, child_pids, quick_overrides
from tests.test_flow import TINY


def interruptible_run(tmp_path, tiny_domains):
    """A quick `reid-prune run` (source_only, then 4 epochs of adapt_only) to interrupt: its command,
    environment, and the checkpoint whose appearance means adapt_only is training."""
    overrides = quick_overrides(tmp_path, tiny_domains, *TINY, "scenarios.names=[source_only,adapt_only]",
                                "scenarios.adaptation=[supervised]", "scenarios.epochs=4")
    command = [sys.executable, "-m", "flows.cli", "run", "--profile", "quick", "--params", str(PARAMS),
               *(arg for o in overrides for arg in ("-S", o))]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    checkpoint = tmp_path / "outputs" / "scenarios" / "adapt_only-none-0-supervised-seed0" / "step1_adapt" / "last.pt"
    return command, env, checkpoint


def test_killed_run_resumes_without_redoing_finished_work(tiny_domains, tmp_path):
    from mlflow.tracking import MlflowClient

    command, env, epoch_checkpoint = interruptible_run(tmp_path, tiny_domains)
    outputs = tmp_path / "outputs"

    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    while not epoch_checkpoint.is_file():  # adapt_only has finished an epoch: kill it mid-scenario
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    (server,) = [pid for pid in child_pids(first.pid) if "uvicorn" in open(f"/proc/{pid}/cmdline").read()]
    os.kill(first.pid, signal.SIGKILL)  # the command alone: no exit handler runs
    first.wait()
    deadline = time.monotonic() + 30
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    server_survived = alive(server)
    if server_survived:
        os.killpg(first.pid, signal.SIGKILL)  # do not leave it behind the test either
    assert not server_survived, "the temporary Prefect server outlived the killed command"
    finished = {path: path.stat().st_mtime_ns for path in (outputs / "pretrain" / "model.pt",
                                                           outputs / "scenarios" / "source_only-none-0-none-seed0"
                                                           / "result.json")}

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("reid-prune ")]
    killed = {r.info.run_id for r in client.search_runs([experiment.experiment_id]) if r.info.status == "RUNNING"}
    assert len(killed) == 2  # the pipeline's run and adapt_only's

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming from" in again.stderr and "last.pt" in again.stderr
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())  # not redone

    runs = client.search_runs([experiment.experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.run_id for r in runs if r.info.status == "FAILED"} == killed
    resumed = next(r for r in runs if r.info.run_name.startswith("adapt_only") and r.info.status == "FINISHED")
    # Only the epochs left after the kill were trained (and logged) by the second run.
    assert 1 <= len(client.get_metric_history(resumed.info.run_id, "train.loss")) < 4
