"""The `prune-adapt` flow: data -> pretrain on source -> evaluate on source and target.

Each stage is also a flow of its own (`prune-adapt-data`, ...), which is what `dvc repro`
runs, so there is one definition of each stage.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from reid_models.checkpoint import save_json
from reid_models.config import Settings, load_settings
from tasks.stages import evaluate, prepare_data, pretrain
from tasks.tracking import tracked_run

DOMAINS = ("source", "target")


def settings_for(profile: str | None, overrides: list[str] | None, params: str) -> Settings:
    return load_settings(params, profile, overrides or [])


def _summarise(settings: Settings, metrics: dict[str, dict]) -> dict:
    """metrics.json: per domain rank-1/5/10, mAP, mINP (what DVC tracks as metrics)."""
    keep = ("rank1", "rank5", "rank10", "mAP", "mINP", "num_valid_queries", "num_skipped_queries")
    summary = {domain: {k: values[k] for k in keep if k in values} for domain, values in metrics.items()}
    save_json(Path(settings.outputs) / "metrics.json", summary)
    return summary


@flow(name="prune-adapt")
def prune_adapt(profile: str | None = None, overrides: list[str] | None = None,
                params: str = "params.yaml") -> dict:
    """The whole pipeline, one MLflow run."""
    settings = settings_for(profile, overrides, params)  # bad settings fail here, before any work
    with tracked_run(settings, f"prune-adapt-{settings.profile}") as tracker:
        tracker.params({"profile": settings.profile, "device": settings.device, "seed": settings.seed,
                        "evaluate": settings.evaluate.model_dump(mode="json")})
        prepare_data(settings, tracker)
        checkpoint = pretrain(settings, tracker)
        tracker.artifact(checkpoint, "pretrain")
        metrics = {domain: evaluate(settings, checkpoint, domain, tracker) for domain in DOMAINS}
        summary = _summarise(settings, metrics)
        tracker.artifact(Path(settings.outputs) / "metrics.json")
    return summary


@flow(name="prune-adapt-data")
def data_stage(profile: str | None = None, overrides: list[str] | None = None, params: str = "params.yaml") -> dict:
    return prepare_data(settings_for(profile, overrides, params))


@flow(name="prune-adapt-pretrain")
def pretrain_stage(profile: str | None = None, overrides: list[str] | None = None,
                   params: str = "params.yaml") -> str:
    settings = settings_for(profile, overrides, params)
    with tracked_run(settings, f"pretrain-{settings.profile}") as tracker:
        return pretrain(settings, tracker)


@flow(name="prune-adapt-evaluate")
def evaluate_stage(profile: str | None = None, overrides: list[str] | None = None,
                   params: str = "params.yaml") -> dict:
    settings = settings_for(profile, overrides, params)
    checkpoint = str(Path(settings.outputs) / "pretrain" / "model.pt")
    with tracked_run(settings, f"evaluate-{settings.profile}") as tracker:
        metrics = {domain: evaluate(settings, checkpoint, domain, tracker) for domain in DOMAINS}
        return _summarise(settings, metrics)


STAGE_FLOWS = {"data": data_stage, "pretrain": pretrain_stage, "evaluate": evaluate_stage}
