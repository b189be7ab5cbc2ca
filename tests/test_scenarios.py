"""The scenario grid's pieces: grid expansion, budgets, the thin dense network, resume, memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from reid_models.complexity import count_flops
from reid_models.config import SettingsError, load_settings
from reid_models.models import ReIDNet
from reid_models.scenarios import Scenario, check_budget, expand_grid, run_scenario, thin_dense_model
from reid_models.stats import PER_QUERY_FILE, load_per_query
from tests.conftest import PARAMS, ROOT, quick_overrides


def test_grid_runs_each_setting_once():
    settings = load_settings(PARAMS, "full", ["scenarios.criteria=[plfp,l1]", "scenarios.flops_reductions=[0.3,0.5]",
                                                "scenarios.seeds=[0,1]"])
    grid = expand_grid(settings)
    per_seed = (1  # source_only: no adaptation, no pruning
                + 2  # adapt_only x 2 adaptation modes
                + 2  # adapt_short (the before/after scenarios' adaptation epochs) x 2 modes
                + 3 * 2 * 2 * 2  # three pruning stages x criteria x reductions x modes
                + 2 * 2)  # small_dense x reductions x modes (no criterion)
    assert len(grid) == len(set(grid)) == 2 * per_seed
    assert {s.criterion for s in grid if s.name in ("source_only", "adapt_only", "adapt_short", "small_dense")} == {"none"}
    assert len({s.key for s in grid}) == len(grid)


def test_unequal_budgets_are_refused_before_any_work():
    with pytest.raises(SettingsError, match="prune_epochs"):
        load_settings(PARAMS, overrides=["scenarios.prune_epochs=6"])
    settings = load_settings(PARAMS, overrides=["adapt.train.images_per_id=8"])
    with pytest.raises(ValueError, match="images_per_id"):
        check_budget(settings)


@pytest.mark.parametrize("name", ["resnet18", "osnet_x0_25"])
def test_small_dense_network_matches_the_pruned_flops_and_starts_untrained(name):
    full = ReIDNet(name, num_classes=5)
    thin = thin_dense_model(name, 0.5, num_classes=5, height=64, width=32)
    assert abs(1 - count_flops(thin, 64, 32) / count_flops(full, 64, 32) - 0.5) <= 0.05
    assert thin.feature_dim == full.feature_dim  # same retrieval embedding as the pruned models
    norms = [m for m in thin.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all()) and m.num_batches_tracked == 0 for m in norms)
    thin.eval()
    assert thin(torch.randn(2, 3, 64, 32)).shape == (2, full.feature_dim)


def test_a_crashed_scenario_resumes_after_its_last_finished_step(tiny_domains, tmp_path, monkeypatch):
    from reid_models import scenarios
    from reid_models.stages import pretrain

    overrides = quick_overrides(tmp_path, tiny_domains, "pretrain.model=osnet_x0_25", "pretrain.ids_per_batch=2",
                                "pretrain.epochs=1", "prune.finetune.ids_per_batch=2", "adapt.train.ids_per_batch=2")
    settings = load_settings(PARAMS, "quick", overrides)
    source = pretrain(settings, tmp_path / "pretrain")["checkpoint"]
    scenario = Scenario("prune_before", "l1", 0.5, "supervised", 0)
    out = tmp_path / "run"

    def crash(*args, **kwargs):
        raise RuntimeError("killed while adapting")

    monkeypatch.setattr(scenarios.ScenarioRun, "adapt", crash)
    with pytest.raises(RuntimeError):
        run_scenario(scenario, settings, source, out, progress=False)
    assert (out / "step1_prune_source" / "model.pt").is_file() and not (out / "result.json").exists()

    monkeypatch.undo()
    monkeypatch.setattr(scenarios, "prune_model", lambda *a, **k: pytest.fail("the finished pruning step re-ran"))
    row = run_scenario(scenario, settings, source, out, progress=False)
    assert row["steps"] == "prune_source+adapt" and row["images_seen"] == scenarios.images_budget(settings)
    assert not list(out.glob("step*/*.pt"))  # resume points are dropped once the result is saved
    # Per-query target results beside result.json (not in it): what the paired comparisons resample.
    per_query = load_per_query(out / PER_QUERY_FILE)
    assert row["result_dir"] == str(out) and "per_query" not in json.loads((out / "result.json").read_text())
    assert per_query["rank1"].mean() == pytest.approx(row["rank1"], abs=1e-9)
    assert per_query["ap"].mean() == pytest.approx(row["mAP"], abs=1e-9)
    assert run_scenario(scenario, settings, source, out, progress=False) == row  # finished: read back
    (out / PER_QUERY_FILE).unlink()  # a result saved before per-query files existed: evaluated again
    assert run_scenario(scenario, settings, source, out, progress=False) == row
    assert np.array_equal(load_per_query(out / PER_QUERY_FILE)["ap"], per_query["ap"])

    changed = load_settings(PARAMS, "quick", [*overrides, "prune.decay=0.5"])
    monkeypatch.undo()
    assert run_scenario(scenario, changed, source, out, progress=False)["images_seen"] == row["images_seen"]
    assert (out / "fingerprint.txt").read_text() != ""


def test_clustering_20000_images_stays_under_2_gb():
    """The k-reciprocal Jaccard graph is sparse: clustering 20,000 features raises the process's
    peak memory by less than 2 GB, where a dense 20k x 20k float32 matrix alone is 1.6 GB.
    Measured above the peak reached once torch, faiss and the features are loaded: that baseline
    is the libraries' (about 1 GB here, more on machines with many cores), not the clustering's."""
    script = textwrap.dedent("""
        import resource
        import numpy as np, torch
        from reid_models.adapt import ClusterSettings, describe_clusters, pseudo_labels
        n, ids = 20000, 2000
        rng = np.random.default_rng(0)
        pids, camids = rng.integers(0, ids, n), rng.integers(0, 6, n)
        features = (rng.standard_normal((ids, 128))[pids] + rng.standard_normal((6, 128))[camids]
                    + 0.4 * rng.standard_normal((n, 128)))
        features, camids = torch.tensor(features, dtype=torch.float32), torch.tensor(camids)
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        labels = pseudo_labels(features, camids, ClusterSettings(eps=0.6))
        report = describe_clusters(labels, pids)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024, report["adjusted_rand_index"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    added_mb, ari = map(float, result.stdout.split()[-2:])
    assert added_mb < 2048
    assert ari > 0.9  # and it still finds the identities


def fingerprints(tmp_path, scenario: Scenario):
    """The fingerprint of `scenario` under the quick profile with some overrides, from one start."""
    from reid_models.scenarios import fingerprint

    start = tmp_path / "model.pt"
    start.write_bytes(b"weights")
    return lambda *overrides: fingerprint(scenario, load_settings(PARAMS, "quick", list(overrides)), start)


def test_new_adaptation_settings_change_the_fingerprint_only_when_they_change_the_run(tmp_path):
    print_of = fingerprints(tmp_path, Scenario("adapt_only", "none", 0.0, "unsupervised", 0))
    plain = print_of()
    assert print_of("adapt.memory.temperature=0.1") == plain  # the classifier head never reads the memory's
    assert print_of("adapt.head=memory") != plain
    assert print_of("adapt.head=memory", "adapt.memory.temperature=0.1") != print_of("adapt.head=memory")
    assert print_of("adapt.cluster.eps_quantile=0.3") != plain
    assert print_of("adapt.mean_teacher=0.95") != plain
    assert print_of("adapt.pseudo_labels=teacher") == plain  # adapt_only prunes nothing: no teacher to label
    memory = print_of("adapt.head=memory")
    assert print_of("adapt.head=memory", "adapt.memory.camera_weight=1.0") == memory  # proxies off: unread
    assert print_of("adapt.head=memory", "adapt.memory.camera_proxies=true") != memory
    assert print_of("adapt.memory.outliers=instances") == plain  # the classifier head has no memory
    assert print_of("adapt.head=memory", "adapt.memory.outliers=instances") != memory


def test_unsupervised_only_settings_leave_supervised_results_valid(tmp_path):
    """A new default for re-clustering or for the pruned runs' pseudo-labels re-runs the unsupervised
    scenarios it changes, and keeps every supervised result."""
    for name in ("adapt_only", "prune_during"):
        supervised = fingerprints(tmp_path, Scenario(name, "plfp", 0.5, "supervised", 0))
        assert supervised("adapt.epochs_per_round=1") == supervised("adapt.epochs_per_round=3")
        assert supervised("adapt.pseudo_labels=teacher") == supervised("adapt.pseudo_labels=student")
    for name in ("prune_during", "prune_after"):
        unsupervised = fingerprints(tmp_path, Scenario(name, "plfp", 0.5, "unsupervised", 0))
        assert unsupervised("adapt.epochs_per_round=1") != unsupervised("adapt.epochs_per_round=3")
        assert unsupervised("adapt.pseudo_labels=teacher") != unsupervised("adapt.pseudo_labels=student")
    before = fingerprints(tmp_path, Scenario("prune_before", "plfp", 0.5, "unsupervised", 0))
    assert before("adapt.pseudo_labels=teacher") == before("adapt.pseudo_labels=student")  # adapts a pruned network


def test_prune_settings_of_the_prune_command_leave_the_grids_results_valid(tmp_path, monkeypatch):
    """`prune.criterion` and `prune.flops_reduction` are `reid-prune prune`'s: the grid's scenarios
    take theirs from `scenarios.criteria` / `scenarios.flops_reductions`, so setting them in
    params.yaml re-runs nothing; a setting a pruning step does read still does."""
    from reid_models import scenarios

    for name in ("prune_before", "prune_during", "prune_after"):
        print_of = fingerprints(tmp_path, Scenario(name, "plfp", 0.5, "supervised", 0))
        assert print_of("prune.criterion=l1", "prune.flops_reduction=0.3") == print_of()
        assert print_of("prune.decay=0.5") != print_of()
    unpruned = fingerprints(tmp_path, Scenario("adapt_only", "none", 0.0, "supervised", 0))
    assert unpruned("prune.decay=0.5") == unpruned()  # never prunes, never reads it
    # A recipe change in code: its version re-runs that scenario, and only it.
    during = fingerprints(tmp_path, Scenario("prune_during", "plfp", 0.5, "supervised", 0))()
    before = fingerprints(tmp_path, Scenario("prune_before", "plfp", 0.5, "supervised", 0))()
    monkeypatch.setitem(scenarios.RECIPE_VERSION, "prune_during", 2)
    assert fingerprints(tmp_path, Scenario("prune_during", "plfp", 0.5, "supervised", 0))() != during
    assert fingerprints(tmp_path, Scenario("prune_before", "plfp", 0.5, "supervised", 0))() == before


def test_latency_budget_settings_change_the_fingerprint_only_when_the_budget_is_latency(tmp_path):
    print_of = fingerprints(tmp_path, Scenario("prune_during", "plfp", 0.5, "supervised", 0))
    plain = print_of()
    assert print_of("prune.latency_threads=4") == plain  # a FLOPs budget never reads the table
    assert print_of("prune.budget=latency") != plain
    assert print_of("prune.budget=latency", "prune.latency_threads=4") != print_of("prune.budget=latency")


def test_a_pruned_unsupervised_run_clusters_the_unpruned_teachers_features(tiny_domains, tmp_path, monkeypatch):
    """adapt.pseudo_labels: teacher -- every clustering of prune_during's unsupervised step reads
    the features of its unpruned teacher, a network apart from the one being pruned."""
    from reid_models import features as features_module
    from reid_models import scenarios
    from reid_models.complexity import count_params
    from reid_models.stages import pretrain

    overrides = quick_overrides(tmp_path, tiny_domains, "pretrain.model=osnet_x0_25", "pretrain.ids_per_batch=2",
                                "pretrain.epochs=1", "prune.finetune.ids_per_batch=2", "adapt.train.ids_per_batch=2",
                                "adapt.pseudo_labels=teacher", "adapt.cluster.min_samples=2")
    settings = load_settings(PARAMS, "quick", overrides)
    source = pretrain(settings, tmp_path / "pretrain")["checkpoint"]
    seen: dict = {"clustered": []}
    extract, adapt = features_module.extract_features, scenarios.adapt_unsupervised

    def spy_extract(model, *args, **kwargs):
        seen["clustered"].append(model)
        return extract(model, *args, **kwargs)

    def spy_adapt(model, *args, **kwargs):
        seen["student"], seen["teacher"] = model, kwargs["label_model"]
        return adapt(model, *args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", spy_extract)
    monkeypatch.setattr(scenarios, "adapt_unsupervised", spy_adapt)
    rounds: list[dict] = []
    row = run_scenario(Scenario("prune_during", "l1", 0.5, "unsupervised", 0), settings, source, tmp_path / "run",
                       progress=False, on_round=rounds.append)
    teacher, student = seen["teacher"], seen["student"]
    assert teacher is not None and teacher is not student
    assert rounds and all(model is teacher for model in seen["clustered"][:len(rounds)])
    assert row["pseudo_labels"].startswith("mean teacher")
    assert count_params(student.backbone) < count_params(teacher.backbone)  # the student ended pruned, not it
