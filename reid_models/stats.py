"""Statistics that resolve the claims: paired differences over seeds with bootstrap intervals.

Scenarios of one seed share the source model and the test queries, so two settings A and B are
compared seed by seed: d_s = mean(A) - mean(B) over the same queries, and the reported
difference is the mean of d_s over seeds. Its 95% interval comes from a hierarchical bootstrap:
draw seeds with replacement, and within each drawn seed draw query *identities* with replacement
(all queries of a drawn identity come together: images of one person are not independent), then
average the resampled paired differences over the drawn seeds; the interval is the percentile
interval of that statistic. The RNG seed is fixed, so a rerun gives the same interval.

A comparison is `resolved` when its interval excludes 0. Inputs are the per-query arrays of
`evaluate_features` ("pid", "camid", "rank1", "ap"), saved per scenario as `per_query.npz`.
Pure numpy/pandas.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PerQuery = Mapping[str, np.ndarray]
PER_QUERY_FILE = "per_query.npz"
METRIC_KEYS = {"rank1": "rank1", "mAP": "ap"}  # reported metric -> per-query array
PRUNING_STAGES = ("prune_before", "prune_during", "prune_after")
REFERENCE_CRITERION = "plfp"
_DRAWS_PER_BLOCK = 2_000_000  # identity draws held at once: bounds the bootstrap's memory


# --------------------------------------------------------------------------- per-query files


def save_per_query(path: str | Path, per_query: PerQuery) -> Path:
    """Write the per-query arrays as .npz atomically (a temporary file, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:  # a file handle: np.savez would append .npz to a name
        np.savez(handle, **{key: np.asarray(value) for key, value in per_query.items()})
    os.replace(partial, path)
    return path


def load_per_query(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(Path(path)) as data:
        return {key: data[key] for key in data.files}


# --------------------------------------------------------------------------- the bootstrap


class Interval(NamedTuple):
    mean: float  # mean over seeds of the per-seed means
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """A vs B on one metric, paired within seeds. Metric values are fractions (0.01 = 1 point)."""

    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    diff: float  # mean over seeds of mean(A) - mean(B)
    per_seed: tuple[float, ...]
    seeds: tuple[int, ...]
    ci_low: float
    ci_high: float
    n_seeds: int
    n_queries: int  # paired queries per seed (the largest if seeds differ)
    n_ids: int  # query identities per seed (the largest if seeds differ)
    resolved: bool  # the interval excludes 0
    verdict: str  # "A better" | "B better" | "not resolved"
    winner: str | None  # the better side's label when resolved, else None

    def as_dict(self) -> dict:
        return {**asdict(self), "per_seed": list(self.per_seed), "seeds": list(self.seeds)}


def _values(per_query: PerQuery, metric: str) -> np.ndarray:
    if metric not in METRIC_KEYS:
        raise ValueError(f"metric must be one of {sorted(METRIC_KEYS)}, got {metric!r}")
    missing = {"pid", METRIC_KEYS[metric]} - set(per_query)
    if missing:
        raise ValueError(f"per-query results lack {sorted(missing)} (have {sorted(per_query)})")
    return np.asarray(per_query[METRIC_KEYS[metric]], dtype=np.float64)


def _check_same_queries(a: PerQuery, b: PerQuery, where: str) -> None:
    for key in ("pid", "camid"):
        if key not in a or key not in b:
            continue
        first, second = np.asarray(a[key]), np.asarray(b[key])
        if first.shape != second.shape or not np.array_equal(first, second):
            raise ValueError(
                f"{where}: A and B were not evaluated on the same queries in the same order ({key} differs: "
                f"{first.size} vs {second.size} queries); a paired comparison needs the same test split")


def _identity_totals(values: np.ndarray, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query identity: the sum of the values and the number of queries."""
    if values.size == 0:
        raise ValueError("no queries to compare")
    _, identity = np.unique(np.asarray(pids), return_inverse=True)
    identity = identity.ravel()
    return np.bincount(identity, weights=values), np.bincount(identity).astype(np.float64)


def _hierarchical_bootstrap(per_seed: list[tuple[np.ndarray, np.ndarray]], n_boot: int,
                            rng: np.random.Generator) -> np.ndarray:
    """n_boot replicates of: seeds drawn with replacement; in each drawn seed, identities drawn
    with replacement (independently for every draw); the mean over drawn seeds of the query mean."""
    n_seeds = len(per_seed)
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    total = np.zeros(n_boot)
    for index, (sums, counts) in enumerate(per_seed):
        replicate = np.nonzero(picks == index)[0]  # one entry per time this seed was drawn
        block = max(1, _DRAWS_PER_BLOCK // sums.size)
        for start in range(0, replicate.size, block):
            rows = replicate[start:start + block]
            draws = rng.integers(0, sums.size, size=(rows.size, sums.size), dtype=np.int32)
            np.add.at(total, rows, sums[draws].sum(axis=1) / counts[draws].sum(axis=1))
    return total / n_seeds


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def _check_n_boot(n_boot: int) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def mean_interval(by_seed: Sequence[PerQuery], metric: str = "rank1", n_boot: int = 2000,
                  confidence: float = 0.95, rng_seed: int = 0) -> Interval:
    """One setting's metric: mean over seeds, with the hierarchical bootstrap's percentile interval."""
    _check_n_boot(n_boot)
    if not by_seed:
        raise ValueError("need the per-query results of at least one seed")
    totals = [_identity_totals(_values(pq, metric), pq["pid"]) for pq in by_seed]
    mean = float(np.mean([sums.sum() / counts.sum() for sums, counts in totals]))
    low, high = _percentiles(_hierarchical_bootstrap(totals, n_boot, np.random.default_rng(rng_seed)), confidence)
    return Interval(mean, low, high)


def paired_difference(a_by_seed: Sequence[PerQuery], b_by_seed: Sequence[PerQuery], metric: str = "rank1",
                      a: str = "A", b: str = "B", seeds: Sequence[int] | None = None, n_boot: int = 2000,
                      confidence: float = 0.95, rng_seed: int = 0) -> Comparison:
    """A - B on `metric` ("rank1" or "mAP"), paired within each seed (entry s of both sequences is
    seed s, evaluated on the same queries in the same order), with a hierarchical bootstrap interval."""
    _check_n_boot(n_boot)
    if len(a_by_seed) != len(b_by_seed) or not a_by_seed:
        raise ValueError(f"need the same number (>= 1) of seeds for A and B, got {len(a_by_seed)} and {len(b_by_seed)}")
    seeds = tuple(range(len(a_by_seed))) if seeds is None else tuple(int(s) for s in seeds)
    if len(seeds) != len(a_by_seed):
        raise ValueError(f"{len(seeds)} seed labels for {len(a_by_seed)} seeds")
    totals, means_a, means_b, sizes, ids = [], [], [], [], []
    for seed, first, second in zip(seeds, a_by_seed, b_by_seed):
        _check_same_queries(first, second, f"{a} vs {b}, seed {seed}")
        values_a, values_b = _values(first, metric), _values(second, metric)
        if values_a.shape != values_b.shape:
            raise ValueError(f"{a} vs {b}, seed {seed}: {values_a.size} vs {values_b.size} queries")
        sums, counts = _identity_totals(values_a - values_b, first["pid"])
        totals.append((sums, counts))
        means_a.append(values_a.mean())
        means_b.append(values_b.mean())
        sizes.append(values_a.size)
        ids.append(sums.size)
    per_seed = tuple(float(x - y) for x, y in zip(means_a, means_b))
    low, high = _percentiles(_hierarchical_bootstrap(totals, n_boot, np.random.default_rng(rng_seed)), confidence)
    resolved = low > 0 or high < 0
    verdict = "not resolved" if not resolved else ("A better" if low > 0 else "B better")
    return Comparison(metric=metric, a=a, b=b, mean_a=float(np.mean(means_a)), mean_b=float(np.mean(means_b)),
                      diff=float(np.mean(per_seed)), per_seed=per_seed, seeds=seeds, ci_low=low, ci_high=high,
                      n_seeds=len(seeds), n_queries=max(sizes), n_ids=max(ids), resolved=resolved, verdict=verdict,
                      winner=None if not resolved else (a if low > 0 else b))


# --------------------------------------------------------------------------- scenario rows


SettingKey = tuple[str, str, str, float]  # (adaptation, scenario name, criterion, flops_reduction)

COMPARISON_COLUMNS = ["comparison", "kind", "a", "b", "adaptation", "flops_reduction", "metric", "mean_a", "mean_b",
                      "diff", "ci_low", "ci_high", "per_seed", "seeds", "n_seeds", "n_queries", "n_ids", "resolved",
                      "verdict", "winner"]


def setting_label(name: str, criterion: str) -> str:
    """`prune_during[plfp]`; plain `adapt_only` for a scenario that does not prune."""
    return name if criterion == "none" else f"{name}[{criterion}]"


def _name(row: Mapping) -> str:
    return row["name"] if "name" in row else row["scenario"]


def _key(row: Mapping) -> SettingKey:
    return row["adaptation"], _name(row), row["criterion"], float(row["flops_reduction"])


def per_query_of_row(row: Mapping) -> dict[str, np.ndarray] | None:
    """The per-query arrays saved beside a scenario's result.json (its `result_dir`), if any."""
    folder = row.get("result_dir")
    if not isinstance(folder, str) or not folder:
        return None
    path = Path(folder) / PER_QUERY_FILE
    return load_per_query(path) if path.is_file() else None


def standard_pairs(rows: Sequence[Mapping]) -> list[tuple[str, SettingKey, SettingKey]]:
    """(kind, A, B) of the comparisons the grid's claims rest on, within each adaptation mode and
    FLOPs reduction: every scenario vs adapt_only, the pruning stages against each other (same
    criterion), each pruning stage vs small_dense, prune_before/after vs adapt_short (adaptation at
    their epochs), and each criterion vs plfp at the same stage."""
    present = {_key(row) for row in rows}
    pairs: list[tuple[str, SettingKey, SettingKey]] = []

    def add(kind: str, first: SettingKey, second: SettingKey) -> None:
        if first in present and second in present:
            pairs.append((kind, first, second))

    for mode in sorted({key[0] for key in present} - {"none"}):
        reference = (mode, "adapt_only", "none", 0.0)
        for source_only in sorted(key for key in present if key[1] == "source_only"):
            add("vs_adapt_only", source_only, reference)
        keys = [key for key in present if key[0] == mode and key[1] in (*PRUNING_STAGES, "small_dense")]
        for reduction in sorted({key[3] for key in keys}):
            criteria = sorted({key[2] for key in keys if key[3] == reduction and key[1] in PRUNING_STAGES},
                              key=lambda c: (c != REFERENCE_CRITERION, c))
            stages = [(mode, stage, criterion, reduction) for stage in PRUNING_STAGES for criterion in criteria]
            small_dense = (mode, "small_dense", "none", reduction)
            for key in [*stages, small_dense]:
                add("vs_adapt_only", key, reference)
            for criterion in criteria:
                for i, first in enumerate(PRUNING_STAGES):
                    for second in PRUNING_STAGES[i + 1:]:
                        add("stages", (mode, first, criterion, reduction), (mode, second, criterion, reduction))
            for key in stages:
                add("vs_small_dense", key, small_dense)
                if key[1] in ("prune_before", "prune_after"):  # they adapt only the short epochs
                    add("vs_adapt_short", key, (mode, "adapt_short", "none", 0.0))
            if REFERENCE_CRITERION in criteria:
                for stage in PRUNING_STAGES:
                    for criterion in criteria[1:]:
                        add("vs_plfp", (mode, stage, criterion, reduction),
                            (mode, stage, REFERENCE_CRITERION, reduction))
    return pairs


def _per_query_by_setting(rows: Sequence[Mapping], per_query: Callable[[Mapping], PerQuery | None]
                          ) -> dict[SettingKey, dict[int, PerQuery]]:
    found: dict[SettingKey, dict[int, PerQuery]] = {}
    for row in rows:
        arrays = per_query(row)
        if arrays is not None:
            found.setdefault(_key(row), {})[int(row["seed"])] = arrays
    return found


def scenario_comparisons(rows: Sequence[Mapping], per_query: Callable[[Mapping], PerQuery | None] = per_query_of_row,
                         metrics: Sequence[str] = ("rank1", "mAP"), n_boot: int = 2000, rng_seed: int = 0
                         ) -> pd.DataFrame:
    """One row per standard comparison and metric (columns COMPARISON_COLUMNS), paired over the
    seeds both sides have per-query results for; a comparison with no such seed is left out."""
    arrays = _per_query_by_setting(rows, per_query)
    records = []
    for kind, first, second in standard_pairs(rows):
        seeds = sorted(set(arrays.get(first, {})) & set(arrays.get(second, {})))
        label_a, label_b = setting_label(first[1], first[2]), setting_label(second[1], second[2])
        if not seeds:
            log.info("%s vs %s (%s): no seed with per-query results on both sides; left out", label_a, label_b,
                     first[0])
            continue
        for metric in metrics:
            result = paired_difference([arrays[first][s] for s in seeds], [arrays[second][s] for s in seeds],
                                       metric, a=label_a, b=label_b, seeds=seeds, n_boot=n_boot, rng_seed=rng_seed)
            records.append({"comparison": f"{label_a} vs {label_b}", "kind": kind, "adaptation": second[0],
                            "flops_reduction": max(first[3], second[3]), **result.as_dict()})
    return pd.DataFrame(records, columns=COMPARISON_COLUMNS)


def setting_intervals(rows: Sequence[Mapping], per_query: Callable[[Mapping], PerQuery | None] = per_query_of_row,
                      metric: str = "rank1", n_boot: int = 2000, rng_seed: int = 0) -> pd.DataFrame:
    """Per setting (scenario, criterion, flops_reduction, adaptation) with per-query results: the
    metric's mean over seeds and its hierarchical bootstrap interval (`{metric}_ci_low/_high`)."""
    records = []
    for (adaptation, name, criterion, reduction), by_seed in _per_query_by_setting(rows, per_query).items():
        interval = mean_interval([by_seed[s] for s in sorted(by_seed)], metric, n_boot=n_boot, rng_seed=rng_seed)
        records.append({"scenario": name, "criterion": criterion, "flops_reduction": reduction,
                        "adaptation": adaptation, f"{metric}_ci_low": interval.low, f"{metric}_ci_high": interval.high})
    return pd.DataFrame(records, columns=["scenario", "criterion", "flops_reduction", "adaptation",
                                          f"{metric}_ci_low", f"{metric}_ci_high"])


def comparison_records(frame: pd.DataFrame) -> list[dict]:
    """The comparisons as JSON-ready dicts (plain Python numbers, lists and booleans)."""
    return json.loads(frame.to_json(orient="records", double_precision=15))


def format_comparison(row: Mapping, points: float = 100.0) -> str:
    """One line, e.g. `prune_during[plfp] vs adapt_only (supervised, -0.5 FLOPs) rank1: -1.2 [-2.9, +0.4],
    per seed -0.9 -1.8 -0.9 (3 seeds): not resolved` or `...: resolved, adapt_only better`
    (differences in points)."""
    where = [f"{row['split']} test" if row.get("split") else "", row.get("adaptation") or "",
             f"-{row['flops_reduction']:g} FLOPs" if row.get("flops_reduction") else ""]
    where = ", ".join(part for part in where if part)
    per_seed = " ".join(f"{points * d:+.1f}" for d in row["per_seed"])
    verdict = f"resolved, {row['winner']} better" if row["resolved"] else "not resolved"
    return (f"{row['comparison']}{f' ({where})' if where else ''} {row['metric']}: {points * row['diff']:+.1f} "
            f"[{points * row['ci_low']:+.1f}, {points * row['ci_high']:+.1f}], per seed {per_seed} "
            f"({row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''}): "
            f"{verdict}")
