"""bench.pruning --target --merge: runs split over processes become one, comparisons included."""

import json

import numpy as np
import pytest

from bench.pruning import merge_target_runs
from reid_models.stats import PER_QUERY_FILE, save_per_query
from reid_models.scenarios import VAL_PER_QUERY_FILE


def _row(tmp_path, seed: int, criterion: str, hits: list[int]) -> dict:
    result_dir = tmp_path / f"{criterion}-seed{seed}"
    per_query = {"pid": np.arange(len(hits)), "camid": np.zeros(len(hits), dtype=int),
                 "rank1": np.array(hits, dtype=float), "ap": np.array(hits, dtype=float)}
    for name in (PER_QUERY_FILE, VAL_PER_QUERY_FILE):
        save_per_query(result_dir / name, per_query)
    return {"seed": seed, "allocation": "shared_l1", "criterion": criterion, "flops_reduction": 0.7,
            "adaptation": "supervised", "result_dir": str(result_dir), "rank1": float(np.mean(hits))}


def test_merged_runs_compare_each_criterion_with_plfp_over_all_their_seeds(tmp_path):
    seed0 = [_row(tmp_path, 0, "plfp", [1, 1, 1, 0]), _row(tmp_path, 0, "l1", [1, 1, 0, 0])]
    seed1 = [_row(tmp_path, 1, "plfp", [1, 0, 1, 0]), _row(tmp_path, 1, "l1", [1, 0, 0, 0])]
    parts = [tmp_path / "a.json", tmp_path / "b.json"]
    for part, rows in zip(parts, (seed0, seed1)):
        part.write_text(json.dumps(rows))
    rows, records = merge_target_runs(parts, tmp_path / "merged.json")
    assert len(rows) == 4 and json.loads((tmp_path / "merged.json").read_text()) == rows
    (test_rank1,) = [r for r in records if r["split"] == "test" and r["metric"] == "rank1"]
    assert test_rank1["comparison"] == "l1 vs plfp (shared_l1 allocation)" and test_rank1["seeds"] == [0, 1]
    assert test_rank1["diff"] == pytest.approx(-0.25)  # l1 misses one more query of 4 in each seed
    assert test_rank1["per_seed"] == pytest.approx([-0.25, -0.25])
    assert (tmp_path / "merged_comparisons.json").is_file()


def test_merging_a_run_twice_is_refused(tmp_path):
    part = tmp_path / "a.json"
    part.write_text(json.dumps([_row(tmp_path, 0, "plfp", [1, 0])]))
    with pytest.raises(SystemExit, match="duplicates"):
        merge_target_runs([part, part], None)


def test_the_same_criterion_under_two_allocations_is_compared_too(tmp_path):
    rows = [{**_row(tmp_path / allocation, seed, "l2", hits), "allocation": allocation}
            for seed in (0, 1) for allocation, hits in (("own", [1, 1, 1, 0]), ("uniform", [1, 0, 0, 0]))]
    part = tmp_path / "a.json"
    part.write_text(json.dumps(rows))
    _, records = merge_target_runs([part], None)
    (test_rank1,) = [r for r in records if r["split"] == "test" and r["metric"] == "rank1"]
    assert test_rank1["comparison"] == "l2: own vs uniform allocation"  # ALLOCATIONS' order: own first
    assert test_rank1["diff"] == pytest.approx(0.5) and test_rank1["seeds"] == [0, 1]


def test_each_distinct_pair_of_runs_is_counted_once(tmp_path):
    """l1 under the shared l1 allocation is l1 under its own: one run, so no 'own vs shared_l1'
    comparison of l1 with itself and no second copy of its comparisons (issue 31)."""
    hits = {"plfp": [1, 1, 0, 0], "l1": [1, 0, 0, 0]}
    rows = [{**_row(tmp_path / allocation, seed, criterion, hits[criterion]), "allocation": allocation}
            for seed in (0, 1) for allocation in ("own", "shared_l1") for criterion in ("plfp", "l1")]
    part = tmp_path / "a.json"
    part.write_text(json.dumps(rows))
    _, records = merge_target_runs([part], None)
    names = [r["comparison"] for r in records if r["split"] == "test" and r["metric"] == "rank1"]
    assert sorted(names) == ["l1 vs plfp (own allocation)", "l1 vs plfp (shared_l1 allocation)",
                             "plfp: own vs shared_l1 allocation"]
    assert all(r["family"] and "p_holm" in r for r in records)
