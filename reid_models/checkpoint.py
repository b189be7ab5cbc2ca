"""Checkpoints: atomic writes, safe loads.

A checkpoint is a plain dict of tensors and JSON-like values (state_dict, settings, epoch,
history), so it loads with `weights_only=True`: no pickled code runs when a file is opened.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or from an incompatible model."""


class DiskFullError(OSError):
    """No space left for a file; the file it was replacing is intact."""

    def __str__(self) -> str:
        return self.strerror  # the whole message, without "[Errno 28]"


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary sibling, flush it to the disk, then rename it over `path`:
    readers see the old file or the new one, never a part. A full disk raises DiskFullError naming
    the file, with the old one left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free / 2**20
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise DiskFullError(errno.ENOSPC, f"no space left on the disk while writing {path} ({free:.0f} MiB "
                                f"free); {kept}. Free some space (or point `outputs` at another disk) and run the "
                                "same command again to resume") from error
        raise
    return path


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    # Serialised in memory first: torch's own file writer reports a full disk as an unspecific
    # RuntimeError, Python's file API as ENOSPC, which atomic_write turns into a clear message.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, buffer.getvalue())


def save_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


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
