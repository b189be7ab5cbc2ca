"""What the user reads: settings and data errors in one or two lines without a traceback (unless
--debug), no library chatter on the console, every command's help with an example, and `doctor`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PARAMS, ROOT, quick_overrides

CLI = [sys.executable, "-m", "flows.cli"]


def _cli(*args: str, tmp_path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _overrides(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("-S", override)]


def test_a_bad_setting_is_one_line_and_the_traceback_only_with_debug(tmp_path):
    plain = _cli("run", "--profile", "quick", "-S", "pretrain.epochs=-3", tmp_path=tmp_path)
    assert plain.returncode == 2
    assert "pretrain.epochs" in plain.stdout and "Traceback" not in plain.stdout + plain.stderr
    assert len([line for line in plain.stdout.splitlines() if line.strip()]) <= 3

    debug = _cli("--debug", "run", "--profile", "quick", "-S", "pretrain.epochs=-3", tmp_path=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stdout + debug.stderr


def test_a_corrupt_image_names_the_file_without_a_traceback_or_library_chatter(tiny_domains, tmp_path):
    target = shutil.copytree(tiny_domains["target"], tmp_path / "target")
    bad = sorted((target / "bounding_box_test").glob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg" * 20)
    overrides = quick_overrides(tmp_path, {**tiny_domains, "target": target}, "data.target.kind=market1501")
    result = _cli("stage", "data", "--profile", "quick", "--params", str(PARAMS), *_overrides(overrides),
                  tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert bad.name in result.stdout and "data.skip_corrupt" in result.stdout
    assert "Traceback" not in output
    for chatter in ("faiss.loader", "Cython evaluation", "prefect.task_runs", "prefect.flow_runs"):
        assert chatter not in output, chatter
    (log_file,) = (tmp_path / "outputs" / "logs").glob("reid-prune-*.log")  # the details are kept there
    assert str(log_file) in result.stdout and "Traceback" in log_file.read_text()


@pytest.mark.parametrize("command", ["", "doctor", "run", "report", "stage", "serve", "stop", "synth", "prune", "estimate",
                                     "inspect"])
def test_every_help_shows_an_example(command, tmp_path):
    result = _cli(*([command] if command else []), "--help", tmp_path=tmp_path, timeout=120)
    assert result.returncode == 0 and re.search(r"Example: reid-prune \w+", result.stdout), result.stdout


def test_doctor_reports_versions_machine_and_measured_speed(tmp_path):
    result = _cli("doctor", "--seconds", "2", "--params", str(PARAMS), "-S", f"outputs={tmp_path / 'outputs'}",
                  tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for field in ("torch 2.", "prefect 3.", "mlflow 3.", "cores: ", "torch threads", "CUDA: ", "free disk at"):
        assert field in result.stdout, field
    speeds = re.search(r"training (\d+) images/s, inference (\d+) images/s", result.stdout)
    assert speeds and 0 < int(speeds[1]) <= int(speeds[2])  # a forward pass costs less than a training step
