"""`dvc repro` on a copy of the project, shrunk to tiny sizes in params.yaml: runs every stage,
then is up to date, then re-runs only what a changed param reaches; `dvc exp run -S` works and
its MLflow runs land in the project's database."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
COPIED = ("reid_models", "tasks", "flows", "dvc.yaml", ".dvcignore", "pyproject.toml")
TINY = {"data": {"synth": {"train_ids": 6, "target_train_ids": 6, "test_ids": 4, "source_test_ids": 4,
                           "images_per_camera": [2, 3], "workers": 1}},
        "pretrain": {"model": "osnet_x0_25", "epochs": 2, "warmup_epochs": 1, "ids_per_batch": 2},
        "prune": {"finetune": {"epochs": 1, "ids_per_batch": 2}},
        "adapt": {"train": {"ids_per_batch": 2}},
        "scenarios": {"names": ["source_only", "prune_during"], "adaptation": ["supervised"], "epochs": 2,
                      "prune_epochs": 1, "batches_per_epoch": 2},
        "evaluate": {"batch_size": 64}, "device": "cpu"}


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in TINY.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                params[key][sub] = {**params[key][sub], **sub_value} if isinstance(sub_value, dict) else sub_value
        else:
            params[key] = value
    return params


def tiny_project(tmp_path: Path, params: dict) -> tuple[Path, dict]:
    """A git + DVC copy of the project with the given params.yaml; returns it and its environment."""
    project = tmp_path / "project"
    project.mkdir()
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(project),
           "DVC_NO_ANALYTICS": "1", "PREFECT_HOME": str(project / ".prefect")}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny project"]):
        subprocess.run(command, cwd=project, env=env, capture_output=True, check=True, timeout=300)
    return project, env


def test_repro_then_up_to_date_then_only_what_changed(tmp_path):
    from mlflow.tracking import MlflowClient

    project, env = tiny_project(tmp_path, tiny_params())

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, " ".join(args) + "\n" + done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    first = run(sys.executable, "-m", "dvc", "repro")
    assert all(f"Running stage '{stage}'" in first for stage in ("data", "pretrain", "scenarios", "report"))
    assert (project / "outputs" / "report" / "metrics.json").is_file()
    assert (project / "dvc.lock").is_file()

    assert "up to date" in run(sys.executable, "-m", "dvc", "repro")

    # One changed param re-runs only the stages that declare it; as a DVC experiment, too.
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")
    changed = run(sys.executable, "-m", "dvc", "exp", "run", "-S", "scenarios.flops_reductions=[0.3]")
    assert "Running stage 'scenarios'" in changed and "Running stage 'report'" in changed
    assert "Running stage 'data'" not in changed and "Running stage 'pretrain'" not in changed

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    (ours,) = [e for e in client.search_experiments() if e.name.startswith("reid-prune ")]
    runs = client.search_runs([ours.experiment_id])
    assert {r.data.params.get("flops_reduction") for r in runs if r.data.params.get("scenario") == "prune_during"} \
        == {"0.5", "0.3"}


@pytest.mark.parametrize("shell", [None, "/bin/bash"], ids=["sh", "bash"])
def test_sigterm_to_dvc_alone_stops_the_running_stage(tmp_path, shell):
    """A supervisor that stops `dvc repro` signals dvc, not its stage: the stage must not train on
    as an orphan. It stops within 10 s, with its stop message, and nothing of the group is left.
    dvc runs the stage through $SHELL, or /bin/sh where SHELL is unset (as under CI): bash execs the
    command, dash stays between dvc and the stage, so both are checked."""
    params = tiny_params()
    params["pretrain"]["epochs"] = 200  # long enough to be stopped mid-training
    project, env = tiny_project(tmp_path, params)
    env.pop("SHELL", None)
    if shell:
        env["SHELL"] = shell
    log = project / "repro.log"
    with open(log, "w") as out:
        repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    epoch = project / "outputs" / "pretrain" / "last.pt"
    deadline = time.monotonic() + 600
    while not epoch.is_file():
        assert repro.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)

    def group() -> list[str]:
        listed = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-g", str(repro.pid)], capture_output=True, text=True)
        return listed.stdout.splitlines()

    assert any("reid-prune stage pretrain" in line for line in group()), group()
    os.kill(repro.pid, signal.SIGTERM)  # dvc alone
    sent = time.monotonic()
    repro.wait(timeout=60)
    while group() and time.monotonic() - sent < 30:
        time.sleep(0.2)
    left = group()
    if left:
        os.killpg(repro.pid, signal.SIGKILL)
    assert not left, f"left running after dvc was stopped: {left}"
    assert time.monotonic() - sent < 10, "the stage took more than 10 s to stop"
    assert "stopped (SIGTERM)" in log.read_text()
