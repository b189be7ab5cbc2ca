"""Paired comparisons over seeds: hierarchical bootstrap over query identities, and the standard
comparisons of the scenario grid (reid_models.stats), as the report and the benches use them."""

from __future__ import annotations

import time
import zlib

import numpy as np
import pandas as pd
import pytest

from reid_models.evaluate import evaluate_features
from reid_models.stats import (
    load_per_query,
    mean_interval,
    paired_difference,
    per_query_of_row,
    save_per_query,
    scenario_comparisons,
    setting_intervals,
)


def _queries(rng: np.random.Generator, ids: int = 200, per_id: int = 3, p: float = 0.6,
             identity_spread: float = 0.3) -> dict[str, np.ndarray]:
    """Per-query results with identity structure: each identity has its own hit probability,
    so queries of one identity are correlated (as in real ReID test sets)."""
    pid = np.repeat(np.arange(ids), per_id)
    p_id = np.clip(p + identity_spread * (rng.random(ids) - 0.5), 0, 1)
    rank1 = (rng.random(pid.size) < p_id[pid]).astype(np.int8)
    return {"pid": pid, "camid": np.tile(np.arange(per_id), ids), "rank1": rank1,
            "ap": np.clip(rank1 * 0.7 + 0.3 * rng.random(pid.size), 0, 1)}


def _pair(seed: int, p_a: float, p_b: float, **kwargs) -> tuple[dict, dict]:
    """A and B on the same queries: the same identity difficulty, independent outcomes."""
    rng = np.random.default_rng(seed)
    ids, per_id = kwargs.get("ids", 200), kwargs.get("per_id", 3)
    pid = np.repeat(np.arange(ids), per_id)
    difficulty = 0.3 * (rng.random(ids) - 0.5)
    out = []
    for p in (p_a, p_b):
        rank1 = (rng.random(pid.size) < np.clip(p + difficulty[pid], 0, 1)).astype(np.int8)
        out.append({"pid": pid, "camid": np.tile(np.arange(per_id), ids), "rank1": rank1,
                    "ap": (0.5 * rank1 + 0.5 * rng.random(pid.size))})
    return out[0], out[1]


def _width(result) -> float:
    return result.ci_high - result.ci_low


# --------------------------------------------------------------------------- paired_difference


def test_a_clear_difference_is_resolved_with_the_right_sign_and_covers_the_truth():
    pairs = [_pair(seed, 0.75, 0.55, ids=300) for seed in range(3)]
    result = paired_difference([a for a, _ in pairs], [b for _, b in pairs], "rank1", a="big", b="small")
    assert result.resolved and result.verdict == "A better" and result.winner == "big"
    assert result.ci_low > 0 and result.ci_low < 0.20 < result.ci_high  # the true difference is 0.20
    assert result.diff == pytest.approx(np.mean(result.per_seed))
    assert result.n_seeds == 3 and result.n_queries == 900 and result.n_ids == 300
    assert result.mean_a - result.mean_b == pytest.approx(result.diff)
    # Swapping the sides flips the sign and the verdict.
    swapped = paired_difference([b for _, b in pairs], [a for a, _ in pairs], "rank1")
    assert swapped.verdict == "B better" and swapped.winner == "B" and swapped.ci_high < 0
    assert swapped.diff == pytest.approx(-result.diff)


def test_identical_settings_are_not_resolved_and_the_interval_is_centred_on_zero():
    same = [_queries(np.random.default_rng(seed)) for seed in range(3)]
    exact = paired_difference(same, same, "mAP")
    assert not exact.resolved and exact.verdict == "not resolved"
    assert exact.ci_low == exact.ci_high == exact.diff == 0.0

    pairs = [_pair(seed, 0.6, 0.6) for seed in range(3)]  # same distribution, independent outcomes
    result = paired_difference([a for a, _ in pairs], [b for _, b in pairs], "rank1")
    assert not result.resolved and result.verdict == "not resolved"
    assert result.ci_low < 0 < result.ci_high
    assert abs(result.ci_low + result.ci_high) / 2 < 0.5 * _width(result)


def test_the_bootstrap_resamples_identities_not_images():
    pairs = [_pair(seed, 0.65, 0.6, ids=150) for seed in range(3)]
    by_identity = paired_difference([a for a, _ in pairs], [b for _, b in pairs], "rank1")

    def doubled(per_query: dict) -> dict:  # every query image of every identity twice
        return {key: np.repeat(value, 2) for key, value in per_query.items()}

    a2, b2 = [doubled(a) for a, _ in pairs], [doubled(b) for _, b in pairs]
    again = paired_difference(a2, b2, "rank1")
    assert again.diff == pytest.approx(by_identity.diff)
    assert (again.ci_low, again.ci_high) == pytest.approx((by_identity.ci_low, by_identity.ci_high), abs=1e-12)

    # Resampling images instead (every image its own identity) would pretend to twice the data.
    as_images = [{**pq, "pid": np.arange(pq["pid"].size)} for pq in a2]
    as_images_b = [{**pq, "pid": np.arange(pq["pid"].size)} for pq in b2]
    image_level = paired_difference(as_images, as_images_b, "rank1")
    assert _width(image_level) < 0.8 * _width(again)


def test_seeds_add_their_spread_to_the_interval():
    """Three seeds that disagree give a wider interval than the same seed three times."""
    pairs = [_pair(seed, 0.6 + 0.08 * (seed - 1), 0.6, ids=300) for seed in range(3)]
    spread = paired_difference([a for a, _ in pairs], [b for _, b in pairs], "rank1")
    middle = pairs[1]
    repeated = paired_difference([middle[0]] * 3, [middle[1]] * 3, "rank1")
    assert _width(spread) > _width(repeated)
    assert spread.per_seed[0] < spread.per_seed[2]


def test_the_interval_is_reproducible_and_one_seed_still_gets_one():
    a, b = _pair(0, 0.7, 0.6)
    first = paired_difference([a], [b], "rank1", n_boot=500)
    assert first == paired_difference([a], [b], "rank1", n_boot=500)  # fixed RNG seed
    assert first.n_seeds == 1 and first.ci_low < first.diff < first.ci_high
    assert paired_difference([a], [b], "rank1", n_boot=500, rng_seed=1).ci_low != first.ci_low


def test_queries_in_a_different_order_are_refused():
    a, b = _pair(0, 0.7, 0.6)
    order = np.random.default_rng(0).permutation(a["pid"].size)
    shuffled = {key: value[order] for key, value in b.items()}
    with pytest.raises(ValueError, match="same queries in the same order"):
        paired_difference([a], [shuffled], "rank1", a="x", b="y")
    with pytest.raises(ValueError, match="same queries"):
        paired_difference([a], [{key: value[:-1] for key, value in b.items()}], "rank1")
    with pytest.raises(ValueError, match="metric"):
        paired_difference([a], [b], "rank5")
    with pytest.raises(ValueError, match="number"):
        paired_difference([a, a], [b], "rank1")


def test_the_bootstrap_is_fast_on_a_realistic_test_set():
    pairs = [_pair(seed, 0.7, 0.68, ids=1000, per_id=3) for seed in range(3)]
    began = time.perf_counter()
    paired_difference([a for a, _ in pairs], [b for _, b in pairs], "rank1", n_boot=2000)
    assert time.perf_counter() - began < 3.0  # about 0.2 s on one core


def test_mean_interval_covers_each_setting_mean():
    by_seed = [_queries(np.random.default_rng(seed), ids=300, p=0.6) for seed in range(3)]
    interval = mean_interval(by_seed, "rank1")
    assert interval.mean == pytest.approx(np.mean([pq["rank1"].mean() for pq in by_seed]))
    assert interval.low < interval.mean < interval.high and interval.low < 0.6 < interval.high


# --------------------------------------------------------------------------- from evaluation


def test_evaluate_features_per_query_results_average_to_its_metrics():
    rng = np.random.default_rng(3)
    ids, dim = 20, 16
    centres = rng.normal(size=(ids, dim))
    q_pids, g_pids = rng.integers(0, ids, 60), rng.integers(0, ids, 300)
    q = centres[q_pids] + 1.2 * rng.normal(size=(60, dim))
    g = centres[g_pids] + 1.2 * rng.normal(size=(300, dim))
    q_cams, g_cams = rng.integers(0, 6, 60), rng.integers(0, 6, 300)
    g_pids[:40] = 99  # identities with no gallery match: their queries are skipped
    q_pids[:3] = 98
    result = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, query_chunk=7)
    per_query = result["per_query"]
    assert result["num_skipped_queries"] >= 3
    assert {key: value.size for key, value in per_query.items()} == {
        key: result["num_valid_queries"] for key in ("pid", "camid", "rank1", "ap")}
    assert 98 not in per_query["pid"]
    assert per_query["rank1"].mean() == pytest.approx(result["rank1"], abs=1e-12)
    assert per_query["ap"].mean() == pytest.approx(result["mAP"], abs=1e-12)
    # Valid: some gallery item of the same identity seen by another camera; kept in query order.
    valid = np.array([((g_pids == p) & (g_cams != c)).any() for p, c in zip(q_pids, q_cams)])
    assert np.array_equal(per_query["pid"], q_pids[valid]) and np.array_equal(per_query["camid"], q_cams[valid])


def test_per_query_files_round_trip_atomically(tmp_path):
    arrays = _queries(np.random.default_rng(0))
    path = save_per_query(tmp_path / "run" / "per_query.npz", arrays)
    assert [p.name for p in path.parent.iterdir()] == ["per_query.npz"]  # no temporary file left
    loaded = load_per_query(path)
    assert loaded.keys() == arrays.keys() and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
    assert per_query_of_row({"result_dir": str(path.parent)})["rank1"].sum() == arrays["rank1"].sum()
    assert per_query_of_row({"result_dir": str(tmp_path)}) is None and per_query_of_row({}) is None


# --------------------------------------------------------------------------- the grid's comparisons

STAGES = ("prune_before", "prune_during", "prune_after")


def _grid_rows(seeds=(0, 1), criteria=("plfp", "l1")) -> list[dict]:
    def row(name, criterion, reduction, adaptation, seed, rank1):
        return {"name": name, "criterion": criterion, "flops_reduction": reduction, "adaptation": adaptation,
                "seed": seed, "rank1": rank1, "mAP": rank1 - 0.1, "mINP": 0.2, "source_rank1": 0.5,
                "flops": 1e9 * (1 - reduction), "params": 1e6, "latency_ms": 5.0, "images_seen": 100,
                "id": f"{name}-{criterion}-{adaptation}-{seed}"}

    rows = []
    for seed in seeds:
        rows.append(row("source_only", "none", 0.0, "none", seed, 0.3))
        rows.append(row("adapt_only", "none", 0.0, "supervised", seed, 0.7))
        rows.append(row("small_dense", "none", 0.5, "supervised", seed, 0.6))
        for stage in STAGES:
            for criterion in criteria:
                rows.append(row(stage, criterion, 0.5, "supervised", seed, 0.65))
    return rows


def _fake_per_query(rows: list[dict]) -> dict[str, dict]:
    """Arrays per row id whose rank-1 mean is the row's rank-1 (the same queries for every row)."""
    out = {}
    for row in rows:
        rng = np.random.default_rng(zlib.crc32(row["id"].encode()))
        pid = np.repeat(np.arange(100), 2)
        rank1 = (rng.random(pid.size) < row["rank1"]).astype(np.int8)
        out[row["id"]] = {"pid": pid, "camid": np.zeros_like(pid), "rank1": rank1, "ap": rank1 * 0.8}
    return out


def test_the_standard_comparisons_pair_the_expected_settings():
    rows = _grid_rows()
    arrays = _fake_per_query(rows)
    del arrays["prune_after-l1-supervised-1"]  # one seed missing on one side: paired over the other
    frame = scenario_comparisons(rows, per_query=lambda r: arrays.get(r["id"]), metrics=("rank1",), n_boot=200)
    pairs = set(zip(frame["kind"], frame["a"], frame["b"]))
    expected = {("vs_adapt_only", "source_only", "adapt_only"),
                ("vs_adapt_only", "small_dense", "adapt_only")}
    expected |= {("vs_adapt_only", f"{s}[{c}]", "adapt_only") for s in STAGES for c in ("plfp", "l1")}
    expected |= {("stages", f"{s}[{c}]", f"{t}[{c}]") for c in ("plfp", "l1")
                 for i, s in enumerate(STAGES) for t in STAGES[i + 1:]}
    expected |= {("vs_small_dense", f"{s}[{c}]", "small_dense") for s in STAGES for c in ("plfp", "l1")}
    expected |= {("vs_plfp", f"{s}[l1]", f"{s}[plfp]") for s in STAGES}
    assert pairs == expected and len(frame) == len(expected) == 23
    assert set(frame["adaptation"]) == {"supervised"} and set(frame["metric"]) == {"rank1"}
    assert set(frame.loc[frame["a"] == "source_only", "flops_reduction"]) == {0.0}
    assert set(frame.loc[frame["a"] != "source_only", "flops_reduction"]) == {0.5}

    seeds = dict(zip(zip(frame["a"], frame["b"]), frame["n_seeds"]))
    assert seeds[("prune_after[l1]", "prune_after[plfp]")] == 1
    assert seeds[("prune_during[l1]", "prune_during[plfp]")] == 2
    row = frame[(frame["a"] == "source_only")].iloc[0]
    assert row["verdict"] == "B better" and row["resolved"]  # 0.3 vs 0.7: resolved even on 2 seeds
    assert row["per_seed"] == pytest.approx([
        arrays[f"source_only-none-none-{s}"]["rank1"].mean() - arrays[f"adapt_only-none-supervised-{s}"]["rank1"].mean()
        for s in (0, 1)])


def test_one_criterion_has_no_criterion_comparisons_and_missing_results_are_left_out():
    rows = _grid_rows(seeds=(0,), criteria=("plfp",))
    arrays = _fake_per_query(rows)
    del arrays["small_dense-none-supervised-0"]
    frame = scenario_comparisons(rows, per_query=lambda r: arrays.get(r["id"]), n_boot=100)
    assert "vs_plfp" not in set(frame["kind"]) and "vs_small_dense" not in set(frame["kind"])
    assert set(frame["metric"]) == {"rank1", "mAP"} and set(frame["n_seeds"]) == {1}
    assert scenario_comparisons(rows, per_query=lambda r: None).empty


def test_the_report_writes_comparisons_and_intervals_from_result_dirs(tmp_path):
    from reid_models.report import load_comparisons, save_results

    rows = _grid_rows()
    arrays = _fake_per_query(rows)
    for row in rows:
        row["result_dir"] = str(save_per_query(tmp_path / "runs" / row["id"] / "per_query.npz", arrays[row["id"]]).parent)
        row["rank1"] = float(arrays[row["id"]]["rank1"].mean())
    paths = save_results(rows, tmp_path / "report", n_boot=200)
    comparisons = load_comparisons(tmp_path / "report")
    assert paths["comparisons"].endswith("comparisons.csv") and len(comparisons) == 2 * 23
    assert isinstance(comparisons["per_seed"][0], list) and len(comparisons["per_seed"][0]) == 2
    summary = pd.read_csv(paths["summary"])
    assert (summary["rank1_ci_low"] <= summary["rank1"] + 1e-9).all()
    assert (summary["rank1"] <= summary["rank1_ci_high"] + 1e-9).all()
    intervals = setting_intervals(rows, n_boot=200)
    assert len(intervals) == len(summary)

    for row in rows:  # without per-query results: no comparisons, and the old file is gone
        del row["result_dir"]
    paths = save_results(rows, tmp_path / "report")
    assert "comparisons" not in paths and load_comparisons(tmp_path / "report") is None


def test_bench_answers_name_a_winner_only_when_resolved():
    from bench.scenarios import answers

    rows = _grid_rows(seeds=(0, 1, 2), criteria=("plfp",))
    arrays = _fake_per_query(rows)
    frame = scenario_comparisons(rows, per_query=lambda r: arrays.get(r["id"]), metrics=("rank1",), n_boot=300)
    records = frame.to_dict("records")
    text = "\n".join(answers(rows, records))
    assert "where to prune: not resolved" in text  # the stages are equal (0.65 each)
    assert {r["resolved"] for r in records} == {True, False}
    for r in records:
        if r["kind"] == "stages":
            continue  # summarised by the where-to-prune line
        winner = r["a"] if r["ci_low"] > 0 else r["b"] if r["ci_high"] < 0 else None
        verdict = f"{winner} better" if winner else "not resolved"
        claim = (f"{r['comparison']} {100 * r['diff']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]: "
                 f"{verdict}")
        assert claim in text
    assert "source_only vs adapt_only" in text and "adapt_only better" in text  # 0.3 vs 0.7


def test_bench_pruning_compares_each_criterion_with_plfp_over_the_seeds_both_ran():
    from bench.pruning import criterion_comparisons

    rows, per_query = [], {}
    for seed in (0, 1, 2):
        rows.append({"criterion": "none", "mode": "none", "seed": seed, "target_reduction": 0.0})
        worse, plfp = _pair(seed, 0.55, 0.75, ids=300)
        for criterion, arrays in (("plfp", plfp), ("l1", worse), ("random", plfp)):
            if criterion == "random" and seed == 2:
                continue  # a run that stopped early: random is paired over seeds 0 and 1 only
            rows.append({"criterion": criterion, "mode": "progressive", "seed": seed, "target_reduction": 0.5})
            per_query[(seed, criterion, 0.5)] = {"source": arrays, "target": arrays}
    records = {(r["a"], r["split"], r["metric"]): r for r in criterion_comparisons(rows, per_query, n_boot=300)}
    assert set(records) == {(c, split, metric) for c in ("l1", "random") for split in ("source", "target")
                            for metric in ("rank1", "mAP")}
    l1 = records[("l1", "source", "rank1")]
    assert l1["b"] == "plfp" and l1["verdict"] == "B better" and l1["seeds"] == [0, 1, 2]
    same = records[("random", "target", "rank1")]
    assert same["seeds"] == [0, 1] and same["diff"] == 0.0 and not same["resolved"]
