"""The committed DVC setup works offline: add, push to the default local remote, lose, pull back."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

DVC = [sys.executable, "-m", "dvc"]


def digest(folder: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_push_then_pull_restores_the_data(tmp_path, tiny_domains):
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *args: subprocess.run(args, cwd=repo, check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run("git", "init", "-q")
    run(*DVC, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the project's remote and analytics off
    shutil.copytree(tiny_domains["source"], repo / "data" / "synthetic" / "source")
    before = digest(repo / "data")

    run(*DVC, "add", "data")
    run(*DVC, "push")
    assert (repo / ".dvc-remote").is_dir()
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run(*DVC, "pull")
    assert digest(repo / "data") == before
