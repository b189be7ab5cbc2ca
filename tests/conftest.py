"""Shared fixtures: tiny synthetic domains and quick-profile settings that write under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture(scope="session")
def tiny_domains(tmp_path_factory) -> dict[str, Path]:
    """Source and target domains of 8 identities each, generated once per test session."""
    from reid_models.data.synth import generate_domain

    root = tmp_path_factory.mktemp("synthetic")
    return {domain: generate_domain(root / domain, domain, seed=0, ids=8, images_per_camera=(2, 3), workers=1)
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
