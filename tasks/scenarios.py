"""Prefect tasks of the scenario grid: the thin dense model's pretraining, one task per
scenario (a child MLflow run each), and the report."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from reid_models import report as results
from reid_models import scenarios
from reid_models.config import Settings
from tasks.stages import transient
from tasks.tracking import Tracker, tracked_run


def scenarios_dir(settings: Settings) -> Path:
    return Path(settings.outputs) / "scenarios"


def report_dir(settings: Settings) -> Path:
    return Path(settings.outputs) / "report"


def finished_rows(settings: Settings) -> list[dict]:
    """The saved results of the current grid (what the `report` stage reads)."""
    rows = []
    for scenario in scenarios.expand_grid(settings):
        path = scenarios_dir(settings) / scenario.key / "result.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the scenarios stage first (reid-prune stage scenarios)")
        rows.append(json.loads(path.read_text()))
    return rows


@task(name="pretrain-small-dense", retries=1, retry_condition_fn=transient, cache_policy=NO_CACHE)
def pretrain_small_dense(settings: Settings, flops_reduction: float, tracker: Tracker | None = None) -> str:
    """The thinner dense network of `small_dense`, trained on source like the full one."""
    on_epoch = ((lambda record: tracker.metrics(record, f"small_dense_{flops_reduction:g}.pretrain.",
                                                step=record["epoch"])) if tracker else None)
    out_dir = scenarios_dir(settings) / f"small_dense_source_{flops_reduction:g}"
    return scenarios.pretrain_small_dense(settings, flops_reduction, out_dir, on_epoch=on_epoch)


@task(name="scenario", task_run_name="{scenario.key}", retries=1, retry_condition_fn=transient,
      cache_policy=NO_CACHE)
def run_scenario(settings: Settings, scenario: scenarios.Scenario, source_checkpoint: str,
                 small_dense_checkpoint: str | None, parent_run_id: str | None) -> dict:
    """One scenario as a child MLflow run: settings, per-epoch curves, final metrics, the model."""
    out_dir = scenarios_dir(settings) / scenario.key
    with tracked_run(settings, scenario.key, parent_run_id=parent_run_id) as tracker:
        tracker.params({"scenario": scenario.name, "criterion": scenario.criterion,
                        "flops_reduction": scenario.flops_reduction, "adaptation": scenario.adaptation,
                        "seed": scenario.seed, "budget": settings.scenarios.model_dump(
                            mode="json", include={"epochs", "prune_epochs", "batches_per_epoch"}),
                        "prune": settings.prune.model_dump(mode="json"), "adapt": settings.adapt.model_dump(mode="json")})
        step = iter(range(1, 10_000))  # one curve across the scenario's steps
        row = scenarios.run_scenario(
            scenario, settings, source_checkpoint, out_dir, small_dense_checkpoint,
            on_epoch=lambda record: tracker.metrics(record, "train.", step=next(step)),
            on_round=lambda record: tracker.metrics(record, "cluster.", step=record["round"]))
        tracker.metrics(row)
        for name in ("model.pt", "result.json", "steps.json"):
            tracker.artifact(out_dir / name)
    return row


@task(name="report", cache_policy=NO_CACHE)
def report(settings: Settings, rows: list[dict], tracker: Tracker | None = None) -> dict:
    """Results table (CSV + parquet), summary over seeds, FLOPs-vs-rank-1 plot, metrics.json."""
    paths = results.save_results(rows, report_dir(settings))
    if tracker:
        for kind in ("csv", "summary", "plot"):
            tracker.artifact(paths[kind], "scenarios")
    return paths
