"""The same seed gives the same metrics whether one or two scenarios run at once (threads)."""

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
