"""The evaluation protocol against torchreid's reference, hand-computed answers and itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchreid.reid.metrics.rank import evaluate_rank

from reid_models.evaluate import (
    evaluate_distances,
    evaluate_features,
    pairwise_distances,
    retrieve_topk,
)

TOL = 1e-6


def _same_results(ours: dict, reference: dict) -> bool:
    """Equal metrics, and equal per-query arrays (numpy arrays do not compare with ==)."""
    ours, reference = dict(ours), dict(reference)
    ours_pq, reference_pq = ours.pop("per_query"), reference.pop("per_query")
    return ours == reference and ours_pq.keys() == reference_pq.keys() and all(
        np.array_equal(ours_pq[key], reference_pq[key]) for key in ours_pq)


def _structured(seed: int, num_query: int = 60, num_gallery: int = 400, ids: int = 30,
                cameras: int = 6) -> dict[str, np.ndarray]:
    """Random labels with ReID structure and random distances (no ties)."""
    rng = np.random.default_rng(seed)
    return {
        "distmat": rng.random((num_query, num_gallery)).astype(np.float32),
        "q_pids": rng.integers(0, ids, num_query),
        "g_pids": rng.integers(0, ids, num_gallery),
        "q_camids": rng.integers(0, cameras, num_query),
        "g_camids": rng.integers(0, cameras, num_gallery),
    }


def _torchreid(data: dict[str, np.ndarray], max_rank: int = 50) -> tuple[np.ndarray, float]:
    return evaluate_rank(
        data["distmat"], data["q_pids"], data["g_pids"], data["q_camids"], data["g_camids"],
        max_rank=max_rank, use_cython=False,
    )


def _assert_same_as_torchreid(ours: dict, cmc: np.ndarray, mAP: float) -> None:
    for k in (1, 5, 10):
        assert ours[f"rank{k}"] == pytest.approx(float(cmc[k - 1]), abs=TOL), f"rank{k}"
    assert ours["mAP"] == pytest.approx(float(mAP), abs=TOL)
    np.testing.assert_allclose(ours["cmc"][: len(cmc)], cmc, atol=TOL)


def _minp_loop(data: dict[str, np.ndarray]) -> float:
    """fast-reid's mINP, one query at a time."""
    inps = []
    for i in range(len(data["q_pids"])):
        order = np.argsort(data["distmat"][i], kind="stable")
        g_pids, g_cams = data["g_pids"][order], data["g_camids"][order]
        keep = ~((g_pids == data["q_pids"][i]) & (g_cams == data["q_camids"][i]))
        raw = (g_pids[keep] == data["q_pids"][i]).astype(int)
        if raw.any():
            last = np.flatnonzero(raw).max()
            inps.append(raw.cumsum()[last] / (last + 1.0))
    return float(np.mean(inps))


# --------------------------------------------------------------------------- (a) vs torchreid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchreid_on_random_inputs(seed: int) -> None:
    data = _structured(seed)
    ours = evaluate_distances(**data)
    _assert_same_as_torchreid(ours, *_torchreid(data))
    assert ours["num_valid_queries"] + ours["num_skipped_queries"] == 60
    assert len(ours["cmc"]) == 50
    assert all(isinstance(ours[key], float) for key in ("rank1", "rank5", "rank10", "mAP", "mINP"))
    assert ours["mINP"] == pytest.approx(_minp_loop(data), abs=1e-12)
    # A protocol bug that scores junk items would not reproduce torchreid here.
    assert 0.0 < ours["mAP"] < 1.0


def test_skipped_queries_are_counted_and_still_match_torchreid() -> None:
    data = _structured(3)
    # Queries 0-2: an identity absent from the gallery. Queries 3-4: an identity seen only by
    # the query's own camera (all junk). Both kinds have no valid true match.
    data["q_pids"][:3] = 999
    data["q_pids"][3:5] = 500
    data["q_camids"][3:5] = 2
    data["g_pids"][:4] = 500
    data["g_camids"][:4] = 2
    ours = evaluate_distances(**data)
    assert ours["num_skipped_queries"] == 5
    assert ours["num_valid_queries"] == 55
    _assert_same_as_torchreid(ours, *_torchreid(data))
    assert ours["mINP"] == pytest.approx(_minp_loop(data), abs=1e-12)


def test_all_queries_skipped_raises() -> None:
    data = _structured(4)
    data["q_pids"][:] = 999
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_distances(**data)


# --------------------------------------------------------------------------- (b) by hand


def test_hand_built_case() -> None:
    # Query 0: pid 1 from camera 0. Gallery, closest first:
    #   d=0.1 pid 1 cam 0  -> junk (same id, same camera), removed
    #   d=0.2 pid 2 cam 1  -> rank 1, wrong
    #   d=0.3 pid 3 cam 2  -> rank 2, wrong
    #   d=0.4 pid 1 cam 1  -> rank 3, match #1
    #   d=0.5 pid 4 cam 0  -> rank 4, wrong
    #   d=0.6 pid 1 cam 2  -> rank 5, match #2
    # Query 1: pid 7 from camera 3, seen in the gallery only by camera 3 -> skipped.
    # The gallery is stored shuffled so that the sort matters.
    g_pids = np.array([4, 1, 7, 2, 1, 3, 1])
    g_camids = np.array([0, 2, 3, 1, 0, 2, 1])
    distmat = np.array([
        [0.5, 0.6, 0.9, 0.2, 0.1, 0.3, 0.4],
        [0.5, 0.4, 0.1, 0.3, 0.2, 0.6, 0.7],
    ])
    ours = evaluate_distances(distmat, np.array([1, 7]), g_pids, np.array([0, 3]), g_camids,
                              max_rank=8)
    assert ours["num_valid_queries"] == 1
    assert ours["num_skipped_queries"] == 1
    assert ours["rank1"] == 0.0
    assert ours["rank5"] == 1.0
    assert ours["rank10"] == 1.0
    assert ours["mAP"] == pytest.approx((1 / 3 + 2 / 5) / 2)  # precision at rank 3 and at rank 5
    assert ours["mINP"] == pytest.approx(2 / 5)  # 2 matches, the last one at rank 5
    # Longer than the 7-item gallery: the curve stays at 1 once every match is found.
    assert ours["cmc"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


# --------------------------------------------------------------------------- (c) features, chunks


def _features(seed: int, num_query: int = 50, num_gallery: int = 300, dim: int = 32):
    """Identity centres plus noise, so that rankings are informative but imperfect."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    q_pids, g_pids = rng.integers(0, 20, num_query), rng.integers(0, 20, num_gallery)
    q = (centres[q_pids] + 1.2 * rng.normal(size=(num_query, dim))).astype(np.float32)
    g = (centres[g_pids] + 1.2 * rng.normal(size=(num_gallery, dim))).astype(np.float32)
    return q, g, q_pids, g_pids, rng.integers(0, 6, num_query), rng.integers(0, 6, num_gallery)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_features_equal_distances_and_chunks_do_not_matter(metric: str) -> None:
    q, g, q_pids, g_pids, q_cams, g_cams = _features(5)
    distmat = pairwise_distances(q, g, metric=metric)
    assert distmat.dtype == np.float32 and distmat.shape == (50, 300)
    reference = evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams)
    assert 0.0 < reference["rank1"] < 1.0  # non-trivial, or the comparison proves little

    for chunk in (1, 7, 1000):
        assert _same_results(evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams,
                                                query_chunk=chunk), reference)
        assert _same_results(evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric=metric,
                                               query_chunk=chunk), reference)


def test_pairwise_distances_formulas() -> None:
    q, g, *_ = _features(6, num_query=5, num_gallery=9)
    qt, gt = torch.from_numpy(q).double(), torch.from_numpy(g).double()
    np.testing.assert_allclose(pairwise_distances(q, g), torch.cdist(qt, gt).pow(2).numpy(),
                               rtol=1e-5, atol=1e-4)
    cosine = torch.nn.functional.normalize(qt, dim=1) @ torch.nn.functional.normalize(gt, dim=1).T
    np.testing.assert_allclose(pairwise_distances(q, g, metric="cosine"), 1 - cosine.numpy(),
                               atol=1e-6)


def test_torch_inputs_are_accepted() -> None:
    data = _structured(7)
    as_torch = {key: torch.from_numpy(value) for key, value in data.items()}
    assert _same_results(evaluate_distances(**as_torch), evaluate_distances(**data))


# --------------------------------------------------------------------------- (d) retrieval


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_retrieve_topk_matches_brute_force(metric: str) -> None:
    q, g, *_ = _features(8, num_query=20, num_gallery=100)
    distances, indices = retrieve_topk(q, g, k=10, metric=metric)
    assert distances.shape == indices.shape == (20, 10)

    expected = torch.from_numpy(pairwise_distances(q, g, metric=metric))
    expected_dist, expected_idx = torch.topk(expected, k=10, dim=1, largest=False)
    np.testing.assert_array_equal(indices, expected_idx.numpy())
    np.testing.assert_allclose(distances, expected_dist.numpy(), rtol=1e-4, atol=1e-4)


def test_retrieve_topk_clamps_k_to_gallery_size() -> None:
    q, g, *_ = _features(9, num_query=3, num_gallery=4)
    distances, indices = retrieve_topk(q, g, k=10)
    assert distances.shape == indices.shape == (3, 4)
    assert sorted(indices[0].tolist()) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- (e) bad input


def test_shape_mismatch_names_the_array() -> None:
    data = _structured(10)
    with pytest.raises(ValueError, match=r"g_pids has shape \(399,\)"):
        evaluate_distances(**{**data, "g_pids": data["g_pids"][:-1]})
    with pytest.raises(ValueError, match=r"q_camids has shape \(61,\)"):
        evaluate_distances(**{**data, "q_camids": np.zeros(61, dtype=int)})
    with pytest.raises(ValueError, match="distmat must be 2-D"):
        evaluate_distances(**{**data, "distmat": data["distmat"][0]})

    q, g, q_pids, g_pids, q_cams, g_cams = _features(11)
    with pytest.raises(ValueError, match="gallery_features has shape"):
        evaluate_features(q, g[:, :-1], q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="q_pids has shape"):
        evaluate_features(q, g, q_pids[:-1], g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="metric must be one of"):
        pairwise_distances(q, g, metric="manhattan")
