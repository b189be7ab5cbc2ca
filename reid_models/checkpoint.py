"""Checkpoints: atomic writes, safe loads.

A checkpoint is a plain dict of tensors and JSON-like values (state_dict, settings, epoch,
history), so it loads with `weights_only=True`: no pickled code runs when a file is opened.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or from an incompatible model."""


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` then rename over `path`: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def save_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one first (e.g. `make run`) or fix the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, or one holding pickled objects
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {error}") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path} has no 'state_dict'; it was not written by reid-prune")
    return payload
