"""Prefect tasks: one per pipeline stage. Each calls the core, logs to MLflow, returns paths.

Retries are for transient failures only: a `SettingsError`, `DataError` or `CheckpointError`
is the user's to fix, so it fails at once.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from reid_models.checkpoint import CheckpointError, save_json
from reid_models.complexity import measure
from reid_models.config import SettingsError, Settings
from reid_models.data.readers import DataError
from reid_models.models import resolve_device
from reid_models import stages
from tasks.tracking import Tracker

USER_ERRORS = (SettingsError, DataError, CheckpointError, ValueError)


def _transient(task_, task_run, state) -> bool:
    """Retry only what is not the user's fault (e.g. a locked SQLite file, a full disk freed later)."""
    try:
        state.result()
    except USER_ERRORS:
        return False
    except Exception:
        return True
    return False


@task(name="prepare-data", retries=1, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def prepare_data(settings: Settings, tracker: Tracker | None = None) -> dict:
    """Generate missing synthetic domains, then read and validate both domains."""
    summary = {}
    for domain in ("source", "target"):
        domain_settings = getattr(settings.data, domain)
        stages.prepare_domain(domain, domain_settings, settings.data, settings.seed)
        splits = stages.load_domain(domain_settings, settings.data, settings.seed)
        summary[domain] = {"path": domain_settings.path, "train_images": len(splits.train),
                           "train_ids": splits.num_train_pids, "query": len(splits.query),
                           "gallery": len(splits.gallery), "cameras": splits.num_cameras}
    report = save_json(Path(settings.outputs) / "data" / "summary.json", summary)
    if tracker:
        tracker.artifact(report, "data")
    return summary


@task(name="pretrain", retries=1, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def pretrain(settings: Settings, tracker: Tracker | None = None) -> str:
    """Train on the source domain; resumes from the last epoch checkpoint after a crash."""
    out_dir = Path(settings.outputs) / "pretrain"
    if tracker:
        tracker.params({"data": settings.data.model_dump(mode="json"),
                        "pretrain": settings.pretrain.model_dump(mode="json"), "seed": settings.seed})
    on_epoch = (lambda record: tracker.metrics(record, "pretrain.", step=record["epoch"])) if tracker else None
    result = stages.pretrain(settings, out_dir, on_epoch=on_epoch)
    save_json(out_dir / "history.json", result["history"])
    if tracker:
        tracker.metrics({"seconds": result["seconds"], "train_images": result["train_images"]}, "pretrain.")
    return result["checkpoint"]


@task(name="prune", retries=1, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def prune(settings: Settings, checkpoint: str, tracker: Tracker | None = None) -> str:
    """Prune the pretrained model under `settings.prune` (progressive or one-shot) and fine-tune it."""
    out_dir = Path(settings.outputs) / "prune"
    if tracker:
        tracker.params({"prune": settings.prune.model_dump(mode="json")})
    on_epoch = (lambda record: tracker.metrics(record, "prune.", step=record["epoch"])) if tracker else None
    result = stages.prune(settings, checkpoint, out_dir, on_epoch=on_epoch)
    if tracker:
        report = result["report"]
        tracker.metrics({"measured_reduction": report["measured_reduction"]}, "prune.")
        for name in ("model.pt", "architecture.json", "prune_report.json"):
            tracker.artifact(out_dir / name, "prune")
    return result["checkpoint"]


@task(name="evaluate", retries=1, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def evaluate(settings: Settings, checkpoint: str, label: str, tracker: Tracker | None = None) -> dict:
    """Cost (FLOPs, params, size, CPU latency/throughput) and Market-1501 metrics on both domains."""
    model = stages.load_model(checkpoint)
    device = resolve_device(settings.device)
    result = {"cost": measure(model, settings.data.height, settings.data.width)}
    for domain in ("source", "target"):
        splits = stages.load_domain(getattr(settings.data, domain), settings.data, settings.seed, check_images=False)
        result[domain] = stages.evaluate_model(model, splits, settings.data, settings.evaluate, device)
    save_json(Path(settings.outputs) / "evaluate" / f"{label}.json", result)
    if tracker:
        tracker.metrics(result["cost"], f"{label}.")
        for domain in ("source", "target"):
            tracker.metrics({k: v for k, v in result[domain].items() if k != "cmc"}, f"{label}.{domain}.")
    return result
