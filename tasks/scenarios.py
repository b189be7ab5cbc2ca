"""Prefect tasks of the scenario grid: the thin dense model's pretraining, one task per
scenario (a child MLflow run each), and the report.

Caching: a task's key is its source code plus its inputs (the settings, the scenario, the paths
it starts from; never the tracker or the parent run). A re-run with unchanged inputs takes the
result from Prefect's store instead of running; the flow refreshes a task's cache when the
files it wrote are gone (`outputs_present`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from reid_models import report as results
from reid_models import scenarios
from reid_models.checkpoint import save_json
from reid_models.config import Settings
from reid_models.shipping import saved_shipping
from tasks.artifacts import publish_report
from tasks.stages import CACHED, transient
from tasks.tracking import Tracker, register_model, set_best_aliases, tracked_run

SCENARIO_CACHE = CACHED - "parent_run_id"  # a re-run's new parent run must not miss the cache


def scenarios_dir(settings: Settings) -> Path:
    return Path(settings.outputs) / "scenarios"


def report_dir(settings: Settings) -> Path:
    return Path(settings.outputs) / "report"


def small_dense_dir(settings: Settings, flops_reduction: float) -> Path:
    return scenarios_dir(settings) / f"small_dense_source_{flops_reduction:g}"


def finished_rows(settings: Settings) -> list[dict]:
    """The saved results of the current grid (what the `report` stage reads)."""
    rows = []
    for scenario in scenarios.expand_grid(settings):
        path = scenarios_dir(settings) / scenario.key / "result.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the scenarios stage first (reid-prune stage scenarios)")
        rows.append(with_shipping(json.loads(path.read_text()), saved_shipping(path.parent, settings))
                    | {"key": scenario.key})
    return rows


def limit_threads(settings: Settings) -> None:
    """The task's torch intra-op threads: a fixed count, not the cores divided among the workers,
    since results change with it (sums split across threads add up in another order)."""
    torch.set_num_threads(settings.orchestration.torch_threads)


@task(name="pretrain-small-dense", retries=1, retry_condition_fn=transient, cache_policy=SCENARIO_CACHE)
def pretrain_small_dense(settings: Settings, flops_reduction: float, tracker: Tracker | None = None) -> str:
    """The thinner dense network of `small_dense`, trained on source like the full one."""
    limit_threads(settings)
    on_epoch = ((lambda record: tracker.metrics(record, f"small_dense_{flops_reduction:g}.pretrain.",
                                                step=record["epoch"])) if tracker else None)
    return scenarios.pretrain_small_dense(settings, flops_reduction, small_dense_dir(settings, flops_reduction),
                                          on_epoch=on_epoch)


def _log_scenario_artifacts(tracker: Tracker, out_dir: Path, title: str) -> None:
    tracker.artifact(out_dir / "model.pt", "model")
    tracker.artifact(out_dir / "architecture.json", "model")
    for name in ("result.json", "steps.json", "cmc.json"):
        tracker.artifact(out_dir / name)
    cmc = json.loads((out_dir / "cmc.json").read_text())["target_cmc"]
    tracker.artifact(results.plot_cmc(cmc, title, out_dir / "cmc.png"))
    for rates in sorted(out_dir.glob("step*/*.json")):  # per-layer channels kept by each pruning step
        tracker.artifact(rates, f"pruning/{rates.parent.name}")


@task(name="scenario", task_run_name="{scenario.key}", retries=1, retry_condition_fn=transient,
      cache_policy=SCENARIO_CACHE)
def run_scenario(settings: Settings, scenario: scenarios.Scenario, source_checkpoint: str,
                 small_dense_checkpoint: str | None, parent_run_id: str | None) -> dict:
    """One scenario as a child MLflow run: settings, per-epoch curves, final metrics, the model
    (logged and registered in the Model Registry)."""
    limit_threads(settings)
    out_dir = scenarios_dir(settings) / scenario.key
    with tracked_run(settings, scenario.key, parent_run_id=parent_run_id) as tracker:
        tracker.params({"scenario": scenario.name, "criterion": scenario.criterion,
                        "flops_reduction": scenario.flops_reduction, "adaptation": scenario.adaptation,
                        "seed": scenario.seed, "torch_threads": torch.get_num_threads(),
                        "budget": settings.scenarios.model_dump(
                            mode="json", include={"epochs", "prune_epochs", "batches_per_epoch"}),
                        # prune.criterion / flops_reduction are the prune command's: the scenario's are above
                        "prune": settings.prune.model_dump(mode="json", exclude={"criterion", "flops_reduction"}),
                        "adapt": settings.adapt.model_dump(mode="json")})
        step = iter(range(1, 10_000))  # one curve across the scenario's steps
        row = scenarios.run_scenario(
            scenario, settings, source_checkpoint, out_dir, small_dense_checkpoint,
            on_epoch=lambda record: tracker.metrics(record, "train.", step=next(step)),
            on_round=lambda record: tracker.metrics(record, "cluster.", step=record["round"]))
        tracker.metrics({**row, "gflops": row["flops"] / 1e9})  # train_gflops (student + teacher) beside images_seen
        tracker.params({"teacher": row.get("teacher", "none"), "recovery": row.get("recovery", "none"),
                        "pseudo_labels": row.get("pseudo_labels", "none")})
        _log_scenario_artifacts(tracker, out_dir, f"{scenario.key}: target CMC")
        version = register_model(settings, tracker, "model", {"scenario": scenario.key,
                                                              "gflops": f"{row['flops'] / 1e9:.3f}"})
    return {**row, "key": scenario.key, "run_id": tracker.run_id, "model_version": version}


def outputs_present(settings: Settings, scenario: scenarios.Scenario) -> bool:
    return (scenarios_dir(settings) / scenario.key / "result.json").is_file()


def with_shipping(row: dict, variants: list[dict]) -> dict:
    """A report row with its shipped variants: the first (`ship.quantize`'s first choice) as the
    row's `shipped_*` columns, all of them under `shipped_variants` (the report's shipped.csv)."""
    return {**row, **(variants[0] if variants else {}), "shipped_variants": variants}


@task(name="ship", task_run_name="ship-{scenario_key}", cache_policy=NO_CACHE)
def ship(settings: Settings, row: dict, scenario_key: str, tracker: Tracker | None = None) -> dict:
    """A finished scenario's model as it ships, once per `ship.quantize` choice
    (reid_models.shipping.ship_scenario: ONNX, int8 or not, scored and timed under ONNX Runtime).
    With a tracker, its child run gets each variant's figures as metrics (`ship.<choice>.*`; the
    first choice also as `shipped_*`), the first choice's files in its `model` folder (MLflow's
    onnx flavour beside model.pt, so the registry version carries what a serving runtime loads)
    and the others' under `shipped/<choice>`. Run after the grid, one model at a time: the
    exporter traces the network, which must not happen beside a scenario still training."""
    from reid_models.shipping import ship_folder, ship_scenario

    limit_threads(settings)
    out_dir = scenarios_dir(settings) / scenario_key
    variants = [ship_scenario(out_dir, settings, quantize) for quantize in settings.ship.quantize]
    if tracker and row.get("run_id"):
        child = Tracker(tracker.client, row["run_id"])
        child.metrics(variants[0])
        for quantize, fields in zip(settings.ship.quantize, variants):
            child.metrics({name.removeprefix("shipped_"): value for name, value in fields.items()
                           if name.startswith("shipped_")}, prefix=f"ship.{quantize}.")  # numbers only
        primary = ship_folder(out_dir, settings.ship.quantize[0])
        if not child.has_artifact("model/MLmodel"):  # a re-run that took this scenario from the cache has it
            child.onnx_model(primary / "model.onnx", "model")
            for name in ("model.json", "model.int8.onnx"):
                if (primary / name).is_file():
                    child.artifact(primary / name, "model")
        for quantize in settings.ship.quantize[1:]:
            if not child.has_artifact(f"shipped/{quantize}/model.json"):
                for path in sorted(ship_folder(out_dir, quantize).glob("model*")):
                    child.artifact(path, f"shipped/{quantize}")
    return with_shipping(row, variants)


def ship_all(settings: Settings, rows: list[dict], tracker: Tracker | None = None) -> list[dict]:
    return [ship(settings, row, row["key"], tracker) for row in rows]


@task(name="report", cache_policy=NO_CACHE)
def report(settings: Settings, rows: list[dict], tracker: Tracker | None = None,
           failed: list[dict] | None = None) -> dict:
    """Results table (CSV + parquet), summary over seeds, FLOPs-vs-rank-1 plot, metrics.json,
    failed.json (the scenarios that raised, with their error; [] when none); with a tracker, also
    the Model Registry aliases of the best model per FLOPs budget."""
    paths = results.save_results(rows, report_dir(settings))
    paths["failed"] = str(save_json(report_dir(settings) / "failed.json", failed or []))
    if tracker:
        for kind in ("csv", "summary", "plot", "comparisons", "resolution"):  # comparisons: only with per-query results
            if kind in paths:
                tracker.artifact(paths[kind], "scenarios")
        if "resolution" in paths:  # the smallest rank-1 difference this run can resolve, on the parent run
            resolution = json.loads(Path(paths["resolution"]).read_text())
            tracker.metrics({"resolvable_rank1_points": 100 * resolution["half_width"]})
            tracker.tags({"how_sure": resolution["line"]})
        aliases = set_best_aliases(settings, rows)
        tracker.params({"registry_aliases": aliases} if aliases else {})
        versions = {row["key"]: row.get("model_version") for row in rows}
        publish_report(settings, rows, paths, failed or [], tracker.experiment_id(), tracker.run_id,
                       {alias: versions[key] for alias, key in aliases.items() if versions.get(key)})
    else:
        publish_report(settings, rows, paths, failed or [])
    return paths
