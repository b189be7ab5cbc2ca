"""The same seed gives the same metrics whether one or two scenarios run at once (threads, processes)."""

import shutil

import pytest

from tests.conftest import PARAMS, quick_overrides
from tests.test_flow import TINY, prefect_harness  # noqa: F401 (a fixture)

# With 2 workers, adapt_only trains beside small_dense's pretraining of its thin network: both
# seeded and drew from torch's process-wide RNG, so each changed the other's augmentations.
# One torch thread per scenario, the default profile's count, for both runs (the quick profile's
# 2 would put 4 threads on 2 cores); source models of one 4-batch epoch keep the test short.
GRID = ("scenarios.names=[adapt_only,small_dense]", "scenarios.adaptation=[supervised]",
        "orchestration.torch_threads=1", "pretrain.epochs=1", "pretrain.warmup_epochs=0",
        "pretrain.batches_per_epoch=4")


@pytest.mark.usefixtures("prefect_harness")
def test_one_or_two_scenarios_at_once_give_the_same_metrics(tiny_domains, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.prune_adapt import scenarios_stage, settings_for
    from reid_models.scenarios import METRICS
    from reid_models.stages import pretrain
    from tasks.stages import source_checkpoint_path

    def overrides(name: str, workers: int) -> list[str]:
        return quick_overrides(tmp_path / name, tiny_domains, *TINY, *GRID, f"orchestration.workers={workers}")

    # One source model for both (pretraining is not what runs in parallel), then the grid.
    source = source_checkpoint_path(settings_for("quick", overrides("alone", 1), str(PARAMS)))
    pretrain(settings_for("quick", overrides("alone", 1), str(PARAMS)), source.parent)
    shutil.copytree(source.parent, tmp_path / "paired" / source.parent.relative_to(tmp_path / "alone"))
    alone = scenarios_stage(profile="quick", overrides=overrides("alone", 1), params=str(PARAMS))
    paired = scenarios_stage(profile="quick", overrides=overrides("paired", 2), params=str(PARAMS))

    assert len(alone) == len(paired) == 2
    by_key = {row["key"]: row for row in paired}
    compared = [*METRICS, *(f"source_{m}" for m in METRICS), "flops", "params", "images_seen"]
    for row in alone:
        twin = by_key[row["key"]]
        differing = {m: (row[m], twin[m]) for m in compared if abs(row[m] - twin[m]) > 1e-6}
        assert not differing, f"{row['key']}: workers=1 vs workers=2: {differing}"
        assert row["torch_threads"] == twin["torch_threads"] == 1  # the fixed count, recorded

    for name in ("alone", "paired"):
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        children = [r for r in runs if "scenario" in r.data.params]
        assert len(children) == 2 and all(r.data.params["torch_threads"] == "1" for r in children)


def test_the_source_model_does_not_depend_on_the_callers_thread_count(tiny_domains, tmp_path):
    """`reid-prune run` pretrains alone, `bench.scenarios` beside other work: both pin the source
    model's training to `orchestration.torch_threads`, so one seed gives one source model."""
    import torch

    from flows.prune_adapt import settings_for
    from reid_models.checkpoint import load_checkpoint
    from tasks.stages import pretrain

    before = torch.get_num_threads()
    weights = {}
    try:
        for ambient in (2, 1):
            torch.set_num_threads(ambient)
            overrides = quick_overrides(tmp_path / f"ambient{ambient}", tiny_domains, *TINY, *GRID)
            checkpoint = pretrain.fn(settings_for("quick", overrides, str(PARAMS)))
            weights[ambient] = load_checkpoint(checkpoint)["state_dict"]
    finally:
        torch.set_num_threads(before)
    assert weights[1].keys() == weights[2].keys()
    differing = [k for k in weights[1] if not torch.equal(weights[1][k], weights[2][k])]
    assert not differing, f"source weights differ with the caller's thread count: {differing[:5]}"


# A pruned scenario and one that clusters (unsupervised adaptation), each a grid of its own so a
# worker process can run either alone; one torch thread per process, as with 2 workers on 2 cores.
PROCESS_JOBS = {"prune_during": ("scenarios.names=[prune_during]", "scenarios.adaptation=[supervised]"),
                "adapt_only_unsupervised": ("scenarios.names=[adapt_only]", "scenarios.adaptation=[unsupervised]")}
PROCESS_SETTINGS = ("orchestration.torch_threads=1", "pretrain.epochs=1", "pretrain.warmup_epochs=0",
                    "pretrain.batches_per_epoch=4")


def run_jobs_in_this_process(job_overrides: list[list[str]], barrier, out: str) -> None:
    """A worker process, as the benches split seeds over processes: the bench's core
    (`bench.scenarios.run_seed`) for each job in turn, with this process's clock around each."""
    import json
    import time
    from pathlib import Path

    from bench.scenarios import run_seed, settings_for_seed

    all_settings = [settings_for_seed(str(PARAMS), "quick", overrides, 0) for overrides in job_overrides]
    if barrier is not None:  # imports done: the workers start their scenarios together
        barrier.wait(timeout=300)
    record = []
    for settings in all_settings:
        began = time.time()
        rows = run_seed(settings)
        record.append({"began": began, "ended": time.time(), "rows": rows})
    Path(out).write_text(json.dumps(record))


def test_one_or_two_worker_processes_give_the_same_metrics_and_weights(tiny_domains, tmp_path):
    """Seeds and scenarios are split over processes that run at once (bench.pruning --merge,
    two bench.scenarios beside each other): a scenario's metrics and final weights must not
    depend on whether it ran alone after another one in its process, or beside another
    process. Checked on prune_during (progressive pruning) and unsupervised adapt_only
    (clustering), with the two processes' own clocks showing that they did overlap."""
    import json
    import multiprocessing
    import shutil

    import torch

    from reid_models.checkpoint import load_checkpoint
    from reid_models.scenarios import METRICS

    context = multiprocessing.get_context("spawn")  # fresh interpreters, as a bench's processes

    def overrides(worker: str, job: str) -> list[str]:
        return quick_overrides(tmp_path / worker, tiny_domains, *TINY, *PROCESS_SETTINGS, *PROCESS_JOBS[job])

    def start(worker: str, jobs: list[str], barrier=None):
        process = context.Process(target=run_jobs_in_this_process, args=(
            [overrides(worker, job) for job in jobs], barrier, str(tmp_path / f"{worker}.json")))
        process.start()
        return process

    # One worker: both scenarios one after the other in one process (it also trains the source model).
    alone = start("alone", list(PROCESS_JOBS))
    alone.join()
    assert alone.exitcode == 0
    # Two workers: one scenario each, at once, from a copy of the same source model.
    barrier = context.Barrier(len(PROCESS_JOBS))
    workers = {}
    for job in PROCESS_JOBS:
        shutil.copytree(tmp_path / "alone" / "outputs" / "pretrain", tmp_path / job / "outputs" / "pretrain")
        workers[job] = start(job, [job], barrier)
    for process in workers.values():
        process.join()
    assert [process.exitcode for process in workers.values()] == [0] * len(workers)

    paired = {job: json.loads((tmp_path / f"{job}.json").read_text())[0] for job in PROCESS_JOBS}
    first, second = paired.values()
    assert max(first["began"], second["began"]) < min(first["ended"], second["ended"]), \
        f"the two worker processes did not overlap: {first['began']:.1f}-{first['ended']:.1f} s vs " \
        f"{second['began']:.1f}-{second['ended']:.1f} s"

    compared = [*METRICS, "flops", "params", "images_seen"]
    for job, record in zip(PROCESS_JOBS, json.loads((tmp_path / "alone.json").read_text())):
        [row], [twin] = record["rows"], paired[job]["rows"]
        assert (row["name"], row["adaptation"]) == (twin["name"], twin["adaptation"])
        differing = {m: (row[m], twin[m]) for m in compared if row[m] != twin[m]}
        assert not differing, f"{job}: 1 worker vs 2: {differing}"
        weights, twin_weights = (load_checkpoint(f"{r['result_dir']}/model.pt")["state_dict"] for r in (row, twin))
        assert weights.keys() == twin_weights.keys()
        changed = [k for k in weights if not torch.equal(weights[k], twin_weights[k])]
        assert not changed, f"{job}: final weights differ between 1 and 2 workers: {changed[:5]}"
    assert paired["prune_during"]["rows"][0]["flops"] < paired["adapt_only_unsupervised"]["rows"][0]["flops"]
