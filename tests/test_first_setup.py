"""`make run`'s set-up in two halves: the estimate runs with only the first half installed.

A fresh `make run` installs pyproject's `[tool.reid-prune] first-install` packages, runs
`python -m flows.cli estimate`, and only then installs Prefect, MLflow, DVC and ONNX. Here a real
`estimate` run sees only the first half: every module of an installed distribution outside
first-install and its dependencies is hidden (`sys.modules[name] = None` makes its import fail as if
it were absent), so a hard import of the second half fails the run and optional ones fall back."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys

from packaging.requirements import Requirement

from tests.conftest import PARAMS, ROOT
from tools.first_requirements import first_requirements

PROJECT = "reid-prune"

RUN_WITH_MODULES_HIDDEN = """
import sys
for name in {hidden!r}:
    sys.modules[name] = None
from flows.cli import app
app({args!r})
"""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution_closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install here: themselves and their dependencies, recursively."""
    names = {Requirement(r).name.lower() for r in requirements}
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name.lower())
    return {_normal(name) for name in seen}


def test_first_install_names_pinned_dependencies_of_the_project():
    requirements = first_requirements(ROOT / "pyproject.toml")
    assert "torch==2.14.1" in requirements and any(r.startswith("torchreid==") for r in requirements)
    second_half = {"prefect", "mlflow", "dvc", "onnx", "onnxruntime", "onnxscript"}
    assert not {Requirement(r).name for r in requirements} & second_half


def _second_half_modules() -> list[str]:
    """Top-level modules of installed distributions that the first half of the set-up does not install."""
    allowed = _distribution_closure(first_requirements(ROOT / "pyproject.toml")) | {PROJECT}
    return sorted(module for module, dists in importlib.metadata.packages_distributions().items()
                  if not {_normal(d) for d in dists} & allowed)


def test_estimate_runs_on_the_first_half_of_the_set_up_alone(tmp_path):
    hidden = _second_half_modules()
    assert {"prefect", "mlflow", "dvc", "onnxruntime"} <= set(hidden)  # the test hides what it means to
    args = ["estimate", "--profile", "quick", "--probe-seconds", "1", "--params", str(PARAMS),
            "-S", f"outputs={tmp_path / 'outputs'}", "-S", f"data.source.path={tmp_path / 'source'}",
            "-S", f"data.target.path={tmp_path / 'target'}"]
    script = RUN_WITH_MODULES_HIDDEN.format(hidden=hidden, args=args)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"probe \(.*training \d+ images/s", result.stdout), result.stdout
    assert re.search(r"estimate: \d+ min \d\d s .*before the set-up's second half", result.stdout), result.stdout
