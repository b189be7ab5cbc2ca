"""The `prune-adapt` flow: data -> pretrain on source -> the scenario grid -> report.

The source model is trained once and shared by every scenario; each scenario is its own task
and a child MLflow run under the pipeline's run. Each stage is also a flow of its own
(`prune-adapt-data`, ...), which is what `dvc repro` runs, so there is one definition of each.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from reid_models.config import Settings, load_settings
from reid_models.scenarios import Scenario, check_budget, expand_grid
from tasks.scenarios import finished_rows, pretrain_small_dense, report, run_scenario
from tasks.stages import prepare_data, pretrain
from tasks.tracking import Tracker, tracked_run


def settings_for(profile: str | None, overrides: list[str] | None, params: str) -> Settings:
    settings = load_settings(params, profile, overrides or [])
    check_budget(settings)  # unequal batch shapes would make the scenarios' budgets unequal
    return settings


def source_checkpoint(settings: Settings) -> str:
    return str(Path(settings.outputs) / "pretrain" / "model.pt")


def run_grid(settings: Settings, source: str, tracker: Tracker | None) -> list[dict]:
    """Every scenario of the grid as a task, `scenarios.workers` at a time."""
    grid = expand_grid(settings)
    small_dense = {reduction: pretrain_small_dense(settings, reduction, tracker)
                   for reduction in sorted({s.flops_reduction for s in grid if s.name == "small_dense"})}
    parent = tracker.run_id if tracker else None
    rows: list[dict] = []
    workers = settings.scenarios.workers
    for start in range(0, len(grid), workers):
        batch: list[Scenario] = grid[start:start + workers]
        futures = [run_scenario.submit(settings, scenario, source, small_dense.get(scenario.flops_reduction), parent)
                   for scenario in batch]
        rows += [future.result() for future in futures]
    return rows


@flow(name="prune-adapt")
def prune_adapt(profile: str | None = None, overrides: list[str] | None = None,
                params: str = "params.yaml") -> dict:
    """The whole pipeline: one parent MLflow run, a child run per scenario."""
    settings = settings_for(profile, overrides, params)  # bad settings fail here, before any work
    with tracked_run(settings, f"prune-adapt-{settings.profile}") as tracker:
        tracker.params({"profile": settings.profile, "device": settings.device, "seed": settings.seed,
                        "scenarios": settings.scenarios.model_dump(mode="json")})
        prepare_data(settings, tracker)
        source = pretrain(settings, tracker)
        tracker.artifact(source, "pretrain")
        rows = run_grid(settings, source, tracker)
        paths = report(settings, rows, tracker)
    return {"rows": rows, "paths": paths}


@flow(name="prune-adapt-data")
def data_stage(profile: str | None = None, overrides: list[str] | None = None, params: str = "params.yaml") -> dict:
    return prepare_data(settings_for(profile, overrides, params))


@flow(name="prune-adapt-pretrain")
def pretrain_stage(profile: str | None = None, overrides: list[str] | None = None,
                   params: str = "params.yaml") -> str:
    settings = settings_for(profile, overrides, params)
    with tracked_run(settings, f"pretrain-{settings.profile}") as tracker:
        return pretrain(settings, tracker)


@flow(name="prune-adapt-scenarios")
def scenarios_stage(profile: str | None = None, overrides: list[str] | None = None,
                    params: str = "params.yaml") -> list[dict]:
    settings = settings_for(profile, overrides, params)
    with tracked_run(settings, f"scenarios-{settings.profile}") as tracker:
        return run_grid(settings, source_checkpoint(settings), tracker)


@flow(name="prune-adapt-report")
def report_stage(profile: str | None = None, overrides: list[str] | None = None,
                 params: str = "params.yaml") -> dict:
    settings = settings_for(profile, overrides, params)
    rows = finished_rows(settings)
    return {"rows": rows, "paths": report(settings, rows)}


STAGE_FLOWS = {"data": data_stage, "pretrain": pretrain_stage, "scenarios": scenarios_stage, "report": report_stage}
