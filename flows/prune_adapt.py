"""The `prune-adapt` flow: data -> pretrain on source -> the scenario grid -> report.

The source model is trained once and shared by every scenario (small_dense's thin network trains
beside it on the second worker); each scenario is its own task
and a child MLflow run under the pipeline's run. The grid is a subflow whose task runner comes
from `params.yaml`'s `orchestration` section (threads here, Dask processes or a Dask cluster
elsewhere): the same code for all. Each stage is also a flow of its own (`prune-adapt-data`,
...), which is what `dvc repro` runs, so there is one definition of each.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager

from prefect import flow
from prefect.exceptions import TerminationSignal
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows import STAGE_NAMES, progress
from reid_models import signals
from reid_models.config import Settings, load_settings
from reid_models.preflight import check_run_inputs
from reid_models.estimate import SOURCE_MODEL, thin_beside_source, thin_pretraining
from reid_models.scenarios import check_budget, expand_grid
from reid_models.signals import StopRequested
from tasks.scenarios import (finished_rows, outputs_present, pretrain_small_dense, report, run_scenario, ship_all,
                             small_dense_dir)
from tasks.stages import data_summary_path, prepare_data, pretrain, source_checkpoint_path
from tasks.tracking import Tracker, close_orphaned_runs, tracked_run

log = logging.getLogger(__name__)


def settings_for(profile: str | None, overrides: list[str] | None, params: str) -> Settings:
    """The settings, and every path they name, checked in seconds: a deployment run started from
    the Prefect UI fails as early, and with the same one line, as the CLI."""
    settings = load_settings(params, profile, overrides or [])
    check_budget(settings)  # unequal batch shapes would make the scenarios' budgets unequal
    check_run_inputs(settings)
    return settings


def task_runner_for(settings: Settings) -> TaskRunner:
    """threads: a pool in this process. dask: a LocalCluster of worker processes, or the
    scheduler at `orchestration.dask_address`."""
    chosen = settings.orchestration
    if chosen.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=chosen.workers)
    from prefect_dask import DaskTaskRunner

    if chosen.dask_address:
        return DaskTaskRunner(address=chosen.dask_address)
    # Workers inherit the project's working directory and environment (relative paths resolve).
    return DaskTaskRunner(cluster_kwargs={"n_workers": chosen.workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "host": "127.0.0.1"})


def _cached(task, present: bool):
    """The task as declared, but recomputed when the files its cached result points at are gone."""
    return task if present else task.with_options(refresh_cache=True)


class ScenariosFailed(RuntimeError):
    """Some scenarios raised; the others finished and were reported (`paths`)."""

    def __init__(self, failed: list[dict], paths: dict | None = None) -> None:
        names = "; ".join(f"{item['scenario']}: {item['error']}" for item in failed)
        super().__init__(f"{len(failed)} scenario(s) failed ({names}); the others' results are in the report")
        self.failed, self.paths = failed, paths


@flow(name="scenario-grid")
def scenario_grid(settings: Settings, source: str, parent_run_id: str | None) -> dict:
    """Every scenario of the grid as a task; the task runner decides how many run at once. A
    scenario that raises does not stop the others: it is listed under `failed`."""
    grid = expand_grid(settings)
    small_dense = {}
    for reduction in sorted({s.flops_reduction for s in grid if s.name == "small_dense"}):
        present = (small_dense_dir(settings, reduction) / "model.pt").is_file()
        small_dense[reduction] = _cached(pretrain_small_dense, present).submit(settings, reduction)
    futures = [_cached(run_scenario, outputs_present(settings, scenario)).submit(
        settings, scenario, source, small_dense.get(scenario.flops_reduction) if scenario.name == "small_dense"
        else None, parent_run_id) for scenario in grid]
    pieces = {**{future: thin_pretraining(r) for r, future in small_dense.items()},
              **{future: scenario.key for future, scenario in zip(futures, grid)}}
    with workers_stop_with_this_thread(cancel_on_failure=False):
        for future in as_completed(list(pieces)):  # in the order they finish, for the progress line
            progress.finished(pieces[future])
        rows, failed = [], []
        for future, scenario in zip(futures, grid):
            try:
                rows.append(future.result())
            except Exception as error:  # noqa: BLE001 -- reported, and the command exits non-zero
                log.error("scenario %s failed: %s", scenario.key, error)
                failed.append({"scenario": scenario.key, "error": (str(error) or type(error).__name__).splitlines()[0]})
        return {"rows": rows, "failed": failed}


@contextmanager
def workers_stop_with_this_thread(cancel_on_failure: bool = True):
    """A stop signal reaches the main thread; work running in a task runner's threads, which the
    runner waits for on exit, is asked to stop at its next batch. So is it when this thread's
    required work fails (`cancel_on_failure`): the run then ends in seconds, not when the work
    beside it has finished for nothing."""
    try:
        yield
    except (KeyboardInterrupt, StopRequested, TerminationSignal) as error:
        signals.request_stop(getattr(error, "signal", None) or getattr(error, "signal_number", signal.SIGINT))
        raise
    except Exception as error:
        if cancel_on_failure:
            signals.cancel(f"cancelled: a required piece of the run failed ({type(error).__name__})")
        raise


def run_grid(settings: Settings, source: str, tracker: Tracker | None) -> dict:
    runner = scenario_grid.with_options(task_runner=task_runner_for(settings))
    return runner(settings, source, tracker.run_id if tracker else None)


def data_task(settings: Settings, tracker: Tracker | None = None) -> dict:
    domains_present = all(os.path.isdir(getattr(settings.data, d).path) for d in ("source", "target"))
    return _cached(prepare_data, domains_present and data_summary_path(settings).is_file())(settings, tracker)


def pretrain_task(settings: Settings, tracker: Tracker | None) -> str:
    return _cached(pretrain, source_checkpoint_path(settings).is_file())(settings, tracker)


def pretrain_side_by_side(settings: Settings, tracker: Tracker | None) -> str:
    """The source model here, and small_dense's thin network on a free worker at the same time (it
    needs only the source data): the stage then takes the source model's time, not the sum. The
    grid finds the thin model on disk and reuses it."""
    beside = thin_beside_source(settings)
    with workers_stop_with_this_thread():
        thin = {r: _cached(pretrain_small_dense, (small_dense_dir(settings, r) / "model.pt").is_file()).submit(
            settings, r) for r in beside}
        source = pretrain_task(settings, tracker)
        progress.finished(SOURCE_MODEL)
        for reduction, future in thin.items():
            future.result()
            progress.finished(thin_pretraining(reduction))
    return source


@flow(name="prune-adapt")
def prune_adapt(profile: str | None = None, overrides: list[str] | None = None,
                params: str = "params.yaml", speed: dict | None = None) -> dict:
    """The whole pipeline: one parent MLflow run, a child run per scenario, and the answer as
    Prefect artifacts (a results table, three sentences with the FLOPs-vs-rank-1 figure, links to
    MLflow). A required piece that fails (data, pretraining) ends the run in seconds; a scenario
    that fails leaves the others' results and ends the run FAILED, naming it.

    Args:
        profile: a profile of params.yaml: quick (minutes), default (the everyday grid) or full
            (the benchmarks' grid). Example: quick
        overrides: settings over the profile, as `KEY.PATH=VALUE` strings (the CLI's -S).
            Example: ["data.target.kind=csv", "data.target.path=/data/my_cameras/manifest.csv",
            "scenarios.seeds=[0,1,2]"]
        params: the settings file, relative to the project folder the server runs in.
            Example: params.yaml
        speed: the machine's measured speed (`reid-prune run` passes its probe) for the progress
            line's time left; leave empty.
    """
    settings = settings_for(profile, overrides, params)  # bad settings fail here, before any work
    signals.reset_cancel()  # an earlier flow run's, in a long-lived process
    close_orphaned_runs(settings)
    tracking = progress.start(settings, speed)
    with tracked_run(settings, f"prune-adapt-{settings.profile}") as tracker:
        tracker.params({"profile": settings.profile, "device": settings.device, "seed": settings.seed,
                        "scenarios": settings.scenarios.model_dump(mode="json"),
                        "orchestration": settings.orchestration.model_dump(mode="json")})
        if tracking:
            tracker.metrics({"probe_train_images_per_s": speed["train"],
                             "estimated_seconds": tracking.plan.total_seconds()})
        data_task(settings, tracker)
        progress.finished("render source", "render target")
        progress.start_stage("pretrain")
        source = pretrain_side_by_side(settings, tracker)
        tracker.artifact(source, "pretrain")
        progress.start_stage("scenarios")
        grid = run_grid(settings, source, tracker)
        if not grid["rows"]:
            raise ScenariosFailed(grid["failed"])  # nothing to report
        progress.start_stage("report")
        rows = ship_all(settings, grid["rows"], tracker)
        paths = report(settings, rows, tracker, grid["failed"])
        if grid["failed"]:
            raise ScenariosFailed(grid["failed"], paths)  # the parent run and the flow run end FAILED
    return {"rows": rows, "paths": paths}


@flow(name="prune-adapt-data")
def data_stage(profile: str | None = None, overrides: list[str] | None = None, params: str = "params.yaml") -> dict:
    return data_task(settings_for(profile, overrides, params))


@flow(name="prune-adapt-pretrain")
def pretrain_stage(profile: str | None = None, overrides: list[str] | None = None,
                   params: str = "params.yaml") -> str:
    settings = settings_for(profile, overrides, params)
    close_orphaned_runs(settings)
    with tracked_run(settings, f"pretrain-{settings.profile}") as tracker:
        return pretrain_task(settings, tracker)


@flow(name="prune-adapt-scenarios")
def scenarios_stage(profile: str | None = None, overrides: list[str] | None = None,
                    params: str = "params.yaml") -> list[dict]:
    settings = settings_for(profile, overrides, params)
    close_orphaned_runs(settings)
    with tracked_run(settings, f"scenarios-{settings.profile}") as tracker:
        grid = run_grid(settings, str(source_checkpoint_path(settings)), tracker)
        rows = ship_all(settings, grid["rows"], tracker)
        if grid["failed"]:
            raise ScenariosFailed(grid["failed"])
        return rows


@flow(name="prune-adapt-report")
def report_stage(profile: str | None = None, overrides: list[str] | None = None,
                 params: str = "params.yaml") -> dict:
    settings = settings_for(profile, overrides, params)
    rows = finished_rows(settings)
    return {"rows": rows, "paths": report(settings, rows)}


STAGE_FLOWS = dict(zip(STAGE_NAMES, (data_stage, pretrain_stage, scenarios_stage, report_stage)))
