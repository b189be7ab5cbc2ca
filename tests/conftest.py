"""Shared fixtures: tiny synthetic domains and quick-profile settings that write under tmp_path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture(scope="session")
def tiny_domains(tmp_path_factory) -> dict[str, Path]:
    """Source and target domains of the quick profile's size, generated once per test session
    (with the quick profile's spec, so the pipeline recognises them and does not render again)."""
    from reid_models.config import load_settings
    from reid_models.data.synth import generate_domain

    data = load_settings(PARAMS, "quick").data
    root = tmp_path_factory.mktemp("synthetic")
    return {domain: generate_domain(root / domain, domain, seed=data.seed, spec=data.synth.spec(domain), workers=1)
            for domain in ("source", "target")}


def quick_overrides(tmp_path: Path, domains: dict[str, Path], *extra: str) -> list[str]:
    """-S overrides that keep every output of a quick run inside tmp_path."""
    return [
        f"outputs={tmp_path / 'outputs'}",
        f"data.source.path={domains['source']}",
        f"data.target.path={domains['target']}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        "device=cpu",
        *extra,
    ]


def write_csv_domain(root: Path, ids: int, seed: int = 0, images_per_camera: int = 3, size=(128, 64)) -> Path:
    """A two-camera PNG dataset under `root` with arbitrary names (img_0001.png, ...) listed in
    `root/manifest.csv` (path,pid,camid; no split column, so the reader splits identities itself).

    Each identity is three blocks of its own colours (hair, top, bottom); each camera has its own
    colour cast; each image gets a random shift and noise. Returns the manifest's path.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    colours = rng.integers(30, 226, size=(ids, 3, 3))  # identity x block x RGB
    casts = np.array([[1.0, 1.0, 1.0], [0.9, 0.95, 1.1]])  # camera 1 is a little darker and bluer
    rows, index = ["path,pid,camid"], 0
    root.mkdir(parents=True, exist_ok=True)
    for pid in range(ids):
        for camid, cast in enumerate(casts):
            for _ in range(images_per_camera):
                image = np.full((height, width, 3), 110.0) + rng.normal(0, 12, (height, width, 3))
                top = int(rng.integers(0, height // 8))
                bounds = [top, top + height // 6, top + height // 2, top + 7 * height // 8]
                for block in range(3):
                    left = int(rng.integers(width // 8, width // 4))
                    image[bounds[block]:bounds[block + 1], left:width - left] = (
                        colours[pid, block] + rng.normal(0, 10, (bounds[block + 1] - bounds[block], width - 2 * left, 3)))
                index += 1
                name = f"img_{index:04d}.png"
                Image.fromarray(np.clip(image * cast, 0, 255).astype(np.uint8)).save(root / name)
                rows.append(f"{name},{pid},{camid}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def child_pids(pid: int) -> list[int]:
    """The PIDs of a process's direct children."""
    return [int(p) for p in subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True,
                                           text=True).stdout.split()]


def alive(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return not state.startswith("Z")  # a zombie has exited
