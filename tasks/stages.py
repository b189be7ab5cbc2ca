"""Prefect tasks: one per pipeline stage. Each calls the core, logs to MLflow, returns paths.

Retries are for transient failures only: a `SettingsError`, `DataError` or `CheckpointError`
is the user's to fix, so it fails at once.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from reid_models.checkpoint import CheckpointError, save_json
from reid_models.config import SettingsError, Settings
from reid_models.data.readers import DataError
from reid_models import stages
from tasks.tracking import Tracker

USER_ERRORS = (SettingsError, DataError, CheckpointError, ValueError)
# Keyed on the task's code and inputs; the flow refreshes the cache when the outputs are gone.
CACHED = TASK_SOURCE + INPUTS - "tracker"


def transient(task_, task_run, state) -> bool:
    """Retry only what is not the user's fault (e.g. a locked SQLite file, a full disk freed later)."""
    try:
        state.result()
    except USER_ERRORS:
        return False
    except Exception:
        return True
    return False


def data_summary_path(settings: Settings) -> Path:
    return Path(settings.outputs) / "data" / "summary.json"


def source_checkpoint_path(settings: Settings) -> Path:
    return Path(settings.outputs) / "pretrain" / "model.pt"


@task(name="prepare-data", retries=1, retry_condition_fn=transient, cache_policy=CACHED)
def prepare_data(settings: Settings, tracker: Tracker | None = None) -> dict:
    """Generate missing synthetic domains, then read and validate both domains."""
    summary = {}
    for domain in ("source", "target"):
        domain_settings = getattr(settings.data, domain)
        stages.prepare_domain(domain, domain_settings, settings.data)
        splits = stages.load_domain(domain_settings, settings.data)
        summary[domain] = {"path": domain_settings.path, "train_images": len(splits.train),
                           "train_ids": splits.num_train_pids, "query": len(splits.query),
                           "gallery": len(splits.gallery), "cameras": splits.num_cameras}
    report = save_json(data_summary_path(settings), summary)
    if tracker:
        tracker.artifact(report, "data")
    return summary


@task(name="pretrain", retries=1, retry_condition_fn=transient, cache_policy=CACHED)
def pretrain(settings: Settings, tracker: Tracker | None = None) -> str:
    """Train on the source domain; resumes from the last epoch checkpoint after a crash."""
    out_dir = source_checkpoint_path(settings).parent
    if tracker:
        tracker.params({"data": settings.data.model_dump(mode="json"),
                        "pretrain": settings.pretrain.model_dump(mode="json"), "seed": settings.seed})
    on_epoch = (lambda record: tracker.metrics(record, "pretrain.", step=record["epoch"])) if tracker else None
    result = stages.pretrain(settings, out_dir, on_epoch=on_epoch)
    save_json(out_dir / "history.json", result["history"])
    if tracker:
        tracker.metrics({"seconds": result["seconds"], "train_images": result["train_images"]}, "pretrain.")
    return result["checkpoint"]
