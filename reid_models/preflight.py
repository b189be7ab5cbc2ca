"""Check every path a run reads or writes, in its first seconds, before any long work.

Each setting that names a file or a folder is checked for what the pipeline will later need from
it: a dataset exists and parses (a manifest's header and columns, Market-1501 file names, image
files present, two cameras, matchable queries: `readers.validate_splits` without decoding), a
starting-weights file loads with `weights_only=True` and maps onto the chosen backbone, and the
folders written to can be written. A problem raises the same one-line error the later stage would
have raised (`DataError`, `CheckpointError`, `SettingsError`) naming the setting, the path and the
fix -- minutes earlier, and before a synthetic domain is rendered or a server started.

Nothing here writes a file that stays behind, and nothing here imports Prefect or MLflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from reid_models.config import DataSettings, DomainSettings, Settings, SettingsError, tracking_uri
from reid_models.data.readers import DataError, read_dataset, validate_splits
from reid_models.data.synth import read_info
from reid_models.models import GLOBAL_RNG_LOCK, ReIDNet, load_backbone_weights


def check_run_inputs(settings: Settings) -> None:
    """What `run`, `stage` and the flows read and write: both domains, `pretrain.init`, the
    output, latency-cache and MLflow folders."""
    for domain in ("source", "target"):
        check_domain(domain, getattr(settings.data, domain), settings.data)
    if settings.pretrain.init:
        check_init_weights(settings.pretrain.init, settings.pretrain.model)
    check_writable_folder("outputs", settings.outputs)
    check_writable_folder("prune.latency_cache", settings.prune.latency_cache)
    uri = tracking_uri(settings.tracking)
    if uri.startswith("sqlite:///"):
        check_writable_folder("tracking.uri", str(Path(uri[len("sqlite:///"):]).parent))
    if "://" not in settings.tracking.artifact_root:
        check_writable_folder("tracking.artifact_root", settings.tracking.artifact_root)


def check_domain(domain: str, settings: DomainSettings, data: DataSettings) -> None:
    """A real dataset must be on disk and readable now; a synthetic one may be rendered later,
    so only where it goes is checked (unless it is already there)."""
    key = f"data.{domain}.path"
    path = Path(settings.path)
    if settings.kind == "synthetic" and read_info(path) is None:
        if path.exists() and not path.is_dir():
            raise DataError(f"{key}: {path} is a file, but a synthetic domain is a folder; point it at a folder "
                            f"(e.g. data/synthetic/{domain})")
        check_writable_folder(key, str(path))
        return
    if settings.kind == "synthetic":
        return  # rendered by this project, and checked again when the stage reads it
    try:
        splits = read_dataset(settings.kind, path, seed=data.seed)
        missing = next((item[0] for part in (splits.train, splits.query, splits.gallery) for item in part
                        if not os.path.isfile(item[0])), None)
        if missing is not None:
            raise DataError(f"{missing}: image listed by the dataset is missing; fix the manifest row or the file")
        validate_splits(splits, check_images=False)
    except (OSError, UnicodeDecodeError) as error:  # unreadable manifest: permissions, binary file
        raise DataError(f"{key}: {path} cannot be read as a {settings.kind} dataset ({error}); fix the path or "
                        "its permissions") from None
    except DataError as error:
        raise DataError(f"{key}: {error}") from None


def check_init_weights(path: str, model_name: str) -> None:
    """`pretrain.init` loads safely and fits `pretrain.model` (the checks pretraining would make)."""
    with GLOBAL_RNG_LOCK:  # torchreid initialises from the global RNG; keep others' draws undisturbed
        state = torch.random.get_rng_state()
        try:
            model = ReIDNet(model_name, num_classes=1)
        finally:
            torch.random.set_rng_state(state)
    load_backbone_weights(model, path)


def check_writable_folder(key: str, folder: str) -> None:
    """`folder` exists as a folder we can write into, or can be created (its nearest existing
    parent is a writable folder). Probed with a temporary file that is removed at once."""
    path = Path(folder)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise SettingsError(f"{key}: {path} cannot be a folder, {existing} is a file; choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".reid-prune-write-check-"):
            pass
    except OSError as error:
        raise SettingsError(f"{key}: cannot write in {existing} ({error.strerror}); choose a writable path or fix "
                            "its permissions") from None

