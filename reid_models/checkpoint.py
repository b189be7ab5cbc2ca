"""Checkpoints: atomic writes, safe loads.

A checkpoint is a plain dict of tensors and JSON-like values (state_dict, settings, epoch,
history), so it loads with `weights_only=True`: no pickled code runs when a file is opened.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
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


TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")  # a zip archive (torch.save since 1.6) or a legacy pickle


def read_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)` with its failures in one line of our own: torch's messages
    run to many lines and suggest `weights_only=False`, the unsafe load this project refuses."""
    path = Path(path)
    if not path.is_file():
        kind = "a folder, not a file" if path.is_dir() else "not found"
        raise CheckpointError(f"{what} {path}: {kind}; fix the path (e.g. outputs/pretrain/model.pt)")
    with open(path, "rb") as file:
        head = file.read(4)
    if not head.startswith(TORCH_FILE_MAGIC):
        raise CheckpointError(f"not a PyTorch checkpoint: {path} ({what}; it is neither a torch.save zip archive "
                              "nor a legacy torch file); give a .pt file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise CheckpointError(f"{what} {path} holds Python objects besides tensors, and reid-prune never runs "
                                  "pickled code when it loads a file; save a plain state_dict instead "
                                  "(torch.save(model.state_dict(), path))") from None
        raise CheckpointError(f"{what} {path} is damaged ({type(error).__name__}); write it again") from None
    except Exception as error:  # noqa: BLE001 -- a truncated or partly copied file
        raise CheckpointError(f"{what} {path} is damaged or truncated ({type(error).__name__}); write it again "
                              "(or copy it again)") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; train one first (e.g. `make run`) or fix the path")
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path} has no 'state_dict'; it was not written by reid-prune")
    return payload
