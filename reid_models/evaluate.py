"""The ReID evaluation protocol (Market-1501 style): CMC rank-k, mAP and mINP.

For each query, gallery items with the same identity *and* the same camera are removed (they are
near-duplicates, not re-identification); a query with no true match left is skipped and counted.
The numbers equal torchreid's python `evaluate_rank` (`eval_market1501`) and mINP is defined as in
fast-reid, but the work is vectorised and done `query_chunk` queries at a time, so memory is
O(chunk x gallery) instead of a python loop over queries on the full matrix.

Rows are ranked with numpy's default argsort, as torchreid does: with numpy 2's SIMD sort it is
several times faster here than torch.argsort (0.55 s vs 4 s for 3368 x 15913 on 2 cores), and
exactly tied distances are then ordered as torchreid orders them. Each row is sorted on its own,
so the query chunk size never changes a result.

Pure numpy/torch (+faiss for `retrieve_topk`); no orchestration or tracking imports here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal, Union

import numpy as np
import torch

log = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]
Metric = Literal["euclidean", "cosine"]
METRICS = ("euclidean", "cosine")
REPORTED_RANKS = (1, 5, 10)


# --------------------------------------------------------------------------- input checks


def _as_tensor(name: str, value: Any, ndim: int) -> torch.Tensor:
    """A CPU tensor view of `value` (no copy for numpy input), with its number of dimensions checked."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    else:
        tensor = torch.as_tensor(np.asarray(value))
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")
    return tensor


def _check_labels(
    q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, num_query: int, num_gallery: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity/camera labels as int64 tensors whose lengths match the query/gallery counts."""
    labels = []
    for name, value, expected, side in (
        ("q_pids", q_pids, num_query, "queries"),
        ("g_pids", g_pids, num_gallery, "gallery items"),
        ("q_camids", q_camids, num_query, "queries"),
        ("g_camids", g_camids, num_gallery, "gallery items"),
    ):
        tensor = _as_tensor(name, value, ndim=1)
        if tensor.shape[0] != expected:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but there are {expected} {side}"
            )
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got dtype {tensor.dtype}")
        labels.append(tensor.to(torch.int64))
    return labels[0], labels[1], labels[2], labels[3]


def _check_options(max_rank: int, query_chunk: int) -> None:
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")


def _check_features(query_features: Any, gallery_features: Any) -> tuple[torch.Tensor, torch.Tensor]:
    query = _as_tensor("query_features", query_features, ndim=2)
    gallery = _as_tensor("gallery_features", gallery_features, ndim=2)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query_features has shape {tuple(query.shape)} and gallery_features has shape "
            f"{tuple(gallery.shape)}: feature dimensions differ"
        )
    if query.shape[0] == 0 or gallery.shape[0] == 0:
        raise ValueError(
            f"need at least one query and one gallery item, got query_features "
            f"{tuple(query.shape)} and gallery_features {tuple(gallery.shape)}"
        )
    return query, gallery


# --------------------------------------------------------------------------- the protocol


def _count_within_rows(flags: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """For entries listed row by row, the running count of `flags` within each entry's row.

    Inclusive: an entry counts itself. A global cumsum minus what the earlier rows contributed.
    """
    flags = flags.to(torch.int64)
    per_row = torch.zeros(num_rows, dtype=torch.int64).index_add_(0, rows, flags)
    before_row = torch.cumsum(per_row, dim=0) - per_row
    return torch.cumsum(flags, dim=0) - before_row[rows]


class _Accumulator:
    """Per-query results gathered chunk by chunk, reduced once at the end."""

    def __init__(self) -> None:
        self.first_rank: list[torch.Tensor] = []  # rank of the first true match, valid queries
        self.ap: list[torch.Tensor] = []
        self.inp: list[torch.Tensor] = []
        self.pids: list[torch.Tensor] = []  # identity and camera of each valid query
        self.camids: list[torch.Tensor] = []
        self.num_skipped = 0

    def add_chunk(
        self,
        dist: torch.Tensor,
        q_pids: torch.Tensor,
        q_camids: torch.Tensor,
        g_pids: torch.Tensor,
        g_camids: torch.Tensor,
    ) -> None:
        """Score one (chunk x gallery) block of distances.

        Only the sort, one comparison and one gather touch the whole block. Everything after
        works on the few same-identity entries (tens per query), which is what makes this fast.
        """
        num_rows = dist.shape[0]
        # numpy's argsort: the fastest row sort here, and the same tie order as torchreid.
        order = torch.from_numpy(np.argsort(dist.numpy(), axis=1))
        # Same identity as the query, in ranked order (gathering bools is cheap).
        same_pid = torch.gather(g_pids.unsqueeze(0) == q_pids.unsqueeze(1), 1, order)

        # (row, position in the ranked list) of every same-identity item, row-major order.
        rows, positions = same_pid.nonzero(as_tuple=True)
        # Same identity and same camera: junk, removed from the list (Market-1501 protocol).
        junk = g_camids[order[rows, positions]] == q_camids[rows]

        # Rank among the kept items = position - junk items ranked above it (they are all
        # same-identity entries, so counting within this sparse list is enough).
        valid_rank = positions - _count_within_rows(junk, rows, num_rows)
        rows, valid_rank = rows[~junk], valid_rank[~junk]  # true matches only from here on

        num_positive = torch.bincount(rows, minlength=num_rows)
        has_match = num_positive > 0
        self.num_skipped += int((~has_match).sum())

        # AP = mean over true matches of precision at that match: (k-th match) / (rank + 1).
        kth = _count_within_rows(torch.ones_like(rows), rows, num_rows)
        precision = kth.to(torch.float64) / (valid_rank + 1).to(torch.float64)
        ap = torch.zeros(num_rows, dtype=torch.float64).index_add_(0, rows, precision)
        ap = ap / num_positive.clamp(min=1)

        # Rank of each query's first and last true match (-1 for queries without one).
        no_rank = torch.full((num_rows,), -1, dtype=torch.int64)
        first_rank = no_rank.scatter_reduce(0, rows, valid_rank, "amin", include_self=False)
        last_rank = no_rank.scatter_reduce(0, rows, valid_rank, "amax", include_self=False)
        # mINP (fast-reid): how far down the list one must go to have found every true match.
        inp = num_positive.to(torch.float64) / (last_rank + 1).clamp(min=1).to(torch.float64)

        self.first_rank.append(first_rank[has_match])
        self.ap.append(ap[has_match])
        self.inp.append(inp[has_match])
        self.pids.append(q_pids[has_match])
        self.camids.append(q_camids[has_match])

    def result(self, max_rank: int) -> dict[str, Any]:
        first_rank = torch.cat(self.first_rank)
        num_valid = int(first_rank.numel())
        if num_valid == 0:
            raise ValueError(
                f"no query has a true match in the gallery once same-identity same-camera items "
                f"are removed ({self.num_skipped} queries skipped); metrics are undefined"
            )
        if self.num_skipped:
            log.info("%d of %d queries have no valid true match and were skipped",
                     self.num_skipped, self.num_skipped + num_valid)

        # CMC[k] = share of valid queries whose first true match is within the top k+1.
        hits_at = torch.bincount(first_rank.clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
        cmc = (torch.cumsum(hits_at, dim=0).to(torch.float64) / num_valid).tolist()

        def rank_k(k: int) -> float:
            return float((first_rank < k).sum()) / num_valid

        out: dict[str, Any] = {f"rank{k}": rank_k(k) for k in REPORTED_RANKS}
        out["mAP"] = float(torch.cat(self.ap).mean())
        out["mINP"] = float(torch.cat(self.inp).mean())
        out["num_valid_queries"] = num_valid
        out["num_skipped_queries"] = self.num_skipped
        out["cmc"] = cmc
        # Per valid query, in query order: what paired comparisons and their intervals are computed from.
        out["per_query"] = {"pid": torch.cat(self.pids).numpy(), "camid": torch.cat(self.camids).numpy(),
                            "rank1": (first_rank == 0).to(torch.int8).numpy(), "ap": torch.cat(self.ap).numpy()}
        return out


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def evaluate_distances(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    query_chunk: int = 256,
) -> dict[str, Any]:
    """Market-1501 protocol on a (num_query, num_gallery) distance matrix (smaller = closer).

    Returns rank1/rank5/rank10, mAP and mINP as fractions in [0, 1], num_valid_queries,
    num_skipped_queries, cmc (length max_rank; entries past the gallery size are 1.0, where
    torchreid would shorten the curve instead) and per_query: numpy arrays over the valid queries
    in query order, "pid", "camid", "rank1" (int8 0/1: first true match at rank 1) and "ap"
    (float64), whose means are rank1 and mAP.
    """
    _check_options(max_rank, query_chunk)
    dist = _as_tensor("distmat", distmat, ndim=2)
    num_query, num_gallery = dist.shape
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"distmat has shape {tuple(dist.shape)}: need queries and gallery items")
    q_pids_t, g_pids_t, q_cam_t, g_cam_t = _check_labels(
        q_pids, g_pids, q_camids, g_camids, num_query, num_gallery
    )
    if dist.dtype not in (torch.float16, torch.float32, torch.float64):
        dist = dist.to(torch.float64)  # exact for integers and bfloat16; numpy sorts it

    acc = _Accumulator()
    for rows in _chunks(num_query, query_chunk):
        acc.add_chunk(dist[rows], q_pids_t[rows], q_cam_t[rows], g_pids_t, g_cam_t)
    return acc.result(max_rank)


# --------------------------------------------------------------------------- from features


class _DistanceBlocks:
    """Distances from any block of queries to the whole gallery, for one metric.

    Computed in float64 and returned as float32: the rows then do not depend on how the queries
    are blocked (BLAS may sum in a different order for different shapes), so chunked evaluation
    gives exactly the numbers of the full matrix.
    """

    def __init__(self, gallery: torch.Tensor, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        gallery = gallery.to(torch.float64)
        if metric == "cosine":
            gallery = torch.nn.functional.normalize(gallery, p=2, dim=1)
        self.gallery_t = gallery.t().contiguous()
        self.gallery_sq = gallery.pow(2).sum(dim=1)

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        query = query.to(torch.float64)
        if self.metric == "cosine":
            query = torch.nn.functional.normalize(query, p=2, dim=1)
            dist = 1.0 - query @ self.gallery_t
        else:
            # ||q||^2 + ||g||^2 - 2 q.g, as torchreid's euclidean_squared_distance (no clamping).
            dist = query.pow(2).sum(dim=1, keepdim=True) + self.gallery_sq.unsqueeze(0)
            dist.addmm_(query, self.gallery_t, beta=1, alpha=-2)
        return dist.to(torch.float32)


def pairwise_distances(
    query_features: ArrayLike, gallery_features: ArrayLike, metric: Metric = "euclidean"
) -> np.ndarray:
    """Full (num_query, num_gallery) float32 distance matrix: squared Euclidean or 1 - cosine."""
    query, gallery = _check_features(query_features, gallery_features)
    return _DistanceBlocks(gallery, metric)(query).numpy()


def evaluate_features(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    metric: Metric = "euclidean",
    max_rank: int = 50,
    query_chunk: int = 256,
) -> dict[str, Any]:
    """`evaluate_distances(pairwise_distances(...))` without ever holding the full matrix
    (same keys, per_query included)."""
    _check_options(max_rank, query_chunk)
    query, gallery = _check_features(query_features, gallery_features)
    q_pids_t, g_pids_t, q_cam_t, g_cam_t = _check_labels(
        q_pids, g_pids, q_camids, g_camids, query.shape[0], gallery.shape[0]
    )
    distances = _DistanceBlocks(gallery, metric)

    acc = _Accumulator()
    for rows in _chunks(query.shape[0], query_chunk):
        acc.add_chunk(distances(query[rows]), q_pids_t[rows], q_cam_t[rows], g_pids_t, g_cam_t)
    return acc.result(max_rank)


# --------------------------------------------------------------------------- ranked lists


def retrieve_topk(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    k: int = 10,
    metric: Metric = "euclidean",
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery items of each query, closest first, via an exact faiss index.

    Returns (distances, indices), both (num_query, k) with k clamped to the gallery size.
    Distances are squared Euclidean for "euclidean" and 1 - cosine similarity for "cosine".
    """
    import faiss  # only needed here; keeps importing the metrics cheap

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query, gallery = _check_features(query_features, gallery_features)
    k = min(k, gallery.shape[0])

    # faiss wants C-contiguous float32 numpy arrays.
    query_np = np.ascontiguousarray(query.numpy(), dtype=np.float32)
    gallery_np = np.ascontiguousarray(gallery.numpy(), dtype=np.float32)
    dim = gallery_np.shape[1]

    if metric == "cosine":
        # Inner product of unit vectors is cosine similarity; normalise copies, not the caller's data.
        query_np, gallery_np = query_np.copy(), gallery_np.copy()
        faiss.normalize_L2(query_np)
        faiss.normalize_L2(gallery_np)
        index = faiss.IndexFlatIP(dim)
        index.add(gallery_np)
        similarity, indices = index.search(query_np, k)
        return (1.0 - similarity).astype(np.float32), indices.astype(np.int64)

    index = faiss.IndexFlatL2(dim)
    index.add(gallery_np)
    distances, indices = index.search(query_np, k)
    return distances, indices.astype(np.int64)
