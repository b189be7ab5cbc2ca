"""The `prune-adapt` flow: data -> pretrain on source -> prune -> evaluate both models on both domains.

Each stage is also a flow of its own (`prune-adapt-data`, ...), which is what `dvc repro`
runs, so there is one definition of each stage.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from reid_models.checkpoint import save_json
from reid_models.config import Settings, load_settings
from tasks.stages import evaluate, prepare_data, pretrain, prune
from tasks.tracking import tracked_run

KEPT_METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP", "num_valid_queries", "num_skipped_queries")


def settings_for(profile: str | None, overrides: list[str] | None, params: str) -> Settings:
    return load_settings(params, profile, overrides or [])


def checkpoints(settings: Settings) -> dict[str, str]:
    outputs = Path(settings.outputs)
    return {"unpruned": str(outputs / "pretrain" / "model.pt"), "pruned": str(outputs / "prune" / "model.pt")}


def _summarise(settings: Settings, results: dict[str, dict]) -> dict:
    """metrics.json (what DVC tracks): per model its cost and per-domain rank-k, mAP, mINP."""
    summary = {
        model: {"cost": result["cost"],
                **{domain: {k: result[domain][k] for k in KEPT_METRICS} for domain in ("source", "target")}}
        for model, result in results.items()
    }
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
        unpruned = pretrain(settings, tracker)
        tracker.artifact(unpruned, "pretrain")
        pruned = prune(settings, unpruned, tracker)
        results = {label: evaluate(settings, path, label, tracker)
                   for label, path in {"unpruned": unpruned, "pruned": pruned}.items()}
        summary = _summarise(settings, results)
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


@flow(name="prune-adapt-prune")
def prune_stage(profile: str | None = None, overrides: list[str] | None = None,
                params: str = "params.yaml") -> str:
    settings = settings_for(profile, overrides, params)
    with tracked_run(settings, f"prune-{settings.profile}") as tracker:
        return prune(settings, checkpoints(settings)["unpruned"], tracker)


@flow(name="prune-adapt-evaluate")
def evaluate_stage(profile: str | None = None, overrides: list[str] | None = None,
                   params: str = "params.yaml") -> dict:
    settings = settings_for(profile, overrides, params)
    with tracked_run(settings, f"evaluate-{settings.profile}") as tracker:
        results = {label: evaluate(settings, path, label, tracker) for label, path in checkpoints(settings).items()}
        return _summarise(settings, results)


STAGE_FLOWS = {"data": data_stage, "pretrain": pretrain_stage, "prune": prune_stage, "evaluate": evaluate_stage}
