"""The same flow on a 2-worker Dask LocalCluster: scenarios run at once in separate processes
and all write to one SQLite MLflow store without losing or corrupting a run."""

from tests.conftest import PARAMS, quick_overrides
from tests.test_flow import TINY, prefect_harness  # noqa: F401  (fixture)


def test_scenarios_run_in_parallel_worker_processes_and_every_run_is_tracked(prefect_harness, tiny_domains,  # noqa: F811
                                                                               tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.prune_adapt import prune_adapt

    overrides = quick_overrides(tmp_path, tiny_domains, *TINY, "orchestration.task_runner=dask",
                                "orchestration.workers=2", "orchestration.torch_threads=1",
                                "scenarios.names=[adapt_only,prune_during]")
    result = prune_adapt(profile="quick", overrides=overrides, params=str(PARAMS))
    assert len(result["rows"]) == 4  # 2 scenarios x supervised, unsupervised

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("reid-prune ")]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    for child in children:  # nothing lost: every child has its final metrics and curves
        assert {"rank1", "mAP", "flops"} <= set(child.data.metrics)
        assert client.get_metric_history(child.info.run_id, "train.loss")

    # Worker processes, not the flow's: two of them, and their scenarios overlapped in time.
    pids = {c.data.tags["pid"] for c in children}
    assert len(pids) == 2 and parent.data.tags["pid"] not in pids
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(later_start < end for (_, end), (later_start, _) in zip(spans, spans[1:]))
