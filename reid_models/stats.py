"""Statistics that resolve the claims: paired differences over seeds, intervals whose coverage is
measured, and Holm's correction for the many comparisons of one table.

The data. Per seed s and test query q, a value x: a rank-1 hit or an AP, or, for a paired
comparison, A's value minus B's on the same query (scenarios of one seed share the source model
and the test queries). The estimate is d = mean over seeds of d_s, the seed's mean over queries.

Two sources of noise, and why the interval needs both:
- Seeds. Training randomness moves d_s. With S = 3 seeds their spread is estimated on 2 degrees
  of freedom, so its term takes Student's t on S - 1 degrees of freedom (4.30 for S = 3).
- Identities. The test identities are a sample of people, and all queries of one person move
  together. The splits depend on `data.seed` only, so every seed is scored on the same identities:
  the part of the identity noise that the seeds share does not show in their spread, and is
  estimated from the queries, with identities resampled *jointly* across seeds.

The variance of d is estimated as seed_term + shared_term:
- seed_term = var(d_s) / S (sample variance over seeds): training noise plus the identity noise
  that differs from seed to seed;
- shared_term = (S * V - mean(v_s)) / (S - 1), clipped at 0, where v_s is the seed's own
  identity variance and V that of the seed-averaged values, both the cluster-robust (delta-method)
  variance of a ratio mean with identities as clusters: what the identity bootstrap estimates,
  without its Monte-Carlo noise (V - mean(v_s)/S is the seeds' common identity noise).
The 95% half-width is sqrt(t(S-1)^2 * seed_term + t(N-1)^2 * shared_term) (N identities): each term
with its own quantile, added in quadrature. Why not the alternatives, measured by simulation
(tests/test_stats.py, docs/RESULTS.md "How sure"): a t-interval on S - 1 degrees of freedom for the
whole variance is 2-4x too cautious when the shared identity noise dominates (false "resolved"
0-2%); Satterthwaite's degrees of freedom for the sum are too bold when the few seeds happen to
agree (7-8% at S = 3); the percentile bootstrap over seeds used before issue 31 shrinks towards
[min, max] of the three per-seed differences (7.5-22%). The quadrature interval stays at or below
5% for S = 3 and 5 and seed noise 0-4x the query noise.

One seed: no seed term can be estimated. The interval (queries only, t on N - 1) is reported for
orientation, labelled "one seed: queries only", and never `resolved`.

Many comparisons: the comparisons of one table are a family; `add_holm` adds Holm-adjusted
p-values (family-wise error 5%) beside the raw interval. A claim stated in the docs needs
`resolved_holm`.

Inputs are the per-query arrays of `evaluate_features` ("pid", "camid", "rank1", "ap"), saved
per scenario as `per_query.npz`. Pure numpy/pandas/scipy.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as distributions

from reid_models.checkpoint import atomic_write
from reid_models.scenario_kinds import PRUNING_STAGES

log = logging.getLogger(__name__)

PerQuery = Mapping[str, np.ndarray]
PER_QUERY_FILE = "per_query.npz"
METRIC_KEYS = {"rank1": "rank1", "mAP": "ap"}  # reported metric -> per-query array
REFERENCE_CRITERION = "plfp"
CONFIDENCE = 0.95
FAMILY_ERROR = 0.05  # Holm: the chance of any false "resolved" in a family
MULTI_SEED = "seeds and identities"
ONE_SEED = "one seed: queries only"


# --------------------------------------------------------------------------- per-query files


def save_per_query(path: str | Path, per_query: PerQuery) -> Path:
    """Write the per-query arrays as .npz, atomically (the project's writer)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in per_query.items()})
    return atomic_write(path, buffer.getvalue())


def load_per_query(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(Path(path)) as data:
        return {key: data[key] for key in data.files}


def run_name(row: Mapping) -> str:
    """A result row's run: the name of its result folder (the scenario key, seed included)."""
    return Path(row["result_dir"]).name


def save_per_query_archive(path: str | Path, rows: Sequence[Mapping]) -> Path:
    """The per-query results of every row in one compressed file (`<run>::<array>` entries), so a
    bench's comparisons can be recomputed from docs/ alone, without the outputs/ folder."""
    arrays = {}
    for row in rows:
        per_query = per_query_of_row(row)
        if per_query is not None:
            arrays.update({f"{run_name(row)}::{key}": value for key, value in per_query.items()})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write(path, buffer.getvalue())


def per_query_from_archive(path: str | Path) -> Callable[[Mapping], dict[str, np.ndarray] | None]:
    """A `per_query` function for `scenario_comparisons` that reads `save_per_query_archive`'s file."""
    by_run: dict[str, dict[str, np.ndarray]] = {}
    for entry, value in load_per_query(path).items():
        run, _, key = entry.partition("::")
        by_run.setdefault(run, {})[key] = value
    return lambda row: by_run.get(run_name(row)) if row.get("result_dir") else None


# --------------------------------------------------------------------------- the interval


class Estimate(NamedTuple):
    """The mean over seeds of a per-query value, its variance terms and its interval."""

    mean: float
    per_seed: tuple[float, ...]
    seed_term: float  # var(d_s) / S; 0 for one seed
    shared_term: float  # the identity noise the seeds share (all of it for one seed)
    n_seeds: int
    n_ids: int  # identities with a query in any seed
    low: float
    high: float
    p_value: float


def identity_table(values_by_seed: Sequence[np.ndarray], pids_by_seed: Sequence[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(sums, counts), each of shape (S, N): per seed and identity (the union over seeds, matched
    by pid), the sum of the values of its queries and their number (0 where it has none)."""
    if not values_by_seed or any(np.asarray(v).size == 0 for v in values_by_seed):
        raise ValueError("no queries to compare")
    identities, inverse = np.unique(np.concatenate([np.asarray(p).ravel() for p in pids_by_seed]),
                                    return_inverse=True)
    sums = np.zeros((len(values_by_seed), identities.size))
    counts = np.zeros_like(sums)
    start = 0
    for seed, values in enumerate(values_by_seed):
        index = inverse[start:start + np.asarray(values).size]
        start += index.size
        sums[seed] = np.bincount(index, weights=np.asarray(values, dtype=np.float64), minlength=identities.size)
        counts[seed] = np.bincount(index, minlength=identities.size)
    return sums, counts


def _quantile(confidence: float, dof: float) -> float:
    return float(distributions.t.ppf(0.5 + confidence / 2, dof))


def half_width(seed_term, shared_term, n_seeds: int, n_ids: int, confidence: float = CONFIDENCE):
    """The interval's half-width: each variance term with its own t quantile, in quadrature
    (floats or arrays of terms, e.g. the coverage simulation's)."""
    seed_part = _quantile(confidence, n_seeds - 1) ** 2 * seed_term if n_seeds > 1 else 0.0 * seed_term
    return np.sqrt(seed_part + _quantile(confidence, max(n_ids - 1, 1)) ** 2 * shared_term)


def variance_terms(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-seed means, seed_term, shared_term) from identity tables of shape (..., S, N); the
    leading axes are independent tables (the coverage simulation estimates thousands at once)."""
    n_seeds = sums.shape[-2]
    totals = counts.sum(-1)
    per_seed = sums.sum(-1) / totals
    influence = (sums - per_seed[..., None] * counts) / totals[..., None]  # each identity's share of d_s
    present = (counts > 0).sum(-1)
    within = (influence ** 2).sum(-1) * present / np.maximum(present - 1, 1)  # v_s
    n_ids = (counts > 0).any(-2).sum(-1)
    joint = (influence.mean(-2) ** 2).sum(-1) * n_ids / np.maximum(n_ids - 1, 1)  # V: identities drawn jointly
    if n_seeds == 1:
        return per_seed, np.zeros_like(joint), within[..., 0]
    seed_term = per_seed.var(-1, ddof=1) / n_seeds
    shared_term = np.clip((n_seeds * joint - within.mean(-1)) / (n_seeds - 1), 0.0, None)
    return per_seed, seed_term, shared_term


def estimate(values_by_seed: Sequence[np.ndarray], pids_by_seed: Sequence[np.ndarray],
             confidence: float = CONFIDENCE) -> Estimate:
    """The mean over seeds of `values` (per query; `pids` its query identities), with the interval
    of the module docstring and the p-value of "the true mean is 0" that matches it."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    sums, counts = identity_table(values_by_seed, pids_by_seed)
    per_seed, seed_term, shared_term = variance_terms(sums, counts)
    seed_term, shared_term = float(seed_term), float(shared_term)
    n_seeds, n_ids = sums.shape
    mean = float(np.mean(per_seed))
    half = float(half_width(seed_term, shared_term, n_seeds, n_ids, confidence))

    def excess(alpha: float) -> float:  # > 0 while 0 is still inside the (1 - alpha) interval
        return float(half_width(seed_term, shared_term, n_seeds, n_ids, 1 - alpha)) ** 2 - mean ** 2

    if mean == 0:
        p_value = 1.0
    elif seed_term + shared_term == 0 or excess(1e-15) <= 0:
        p_value = 1e-15
    else:
        p_value = float(optimize.brentq(excess, 1e-15, 1.0, xtol=1e-12))
    return Estimate(mean, tuple(float(x) for x in per_seed), seed_term, shared_term, n_seeds, n_ids,
                    mean - half, mean + half, p_value)


# --------------------------------------------------------------------------- comparisons


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
    p_value: float  # of "no difference", consistent with the interval (p < 0.05 <=> it excludes 0)
    n_seeds: int
    n_queries: int  # paired queries per seed (the largest if seeds differ)
    n_ids: int  # query identities (over all seeds)
    evidence: str  # MULTI_SEED | ONE_SEED (never resolved)
    resolved: bool  # several seeds and the interval excludes 0 (before any multiplicity correction)
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


def mean_interval(by_seed: Sequence[PerQuery], metric: str = "rank1", confidence: float = CONFIDENCE) -> Interval:
    """One setting's metric: the mean over seeds with the module's interval."""
    if not by_seed:
        raise ValueError("need the per-query results of at least one seed")
    result = estimate([_values(pq, metric) for pq in by_seed], [pq["pid"] for pq in by_seed], confidence)
    return Interval(result.mean, result.low, result.high)


def paired_difference(a_by_seed: Sequence[PerQuery], b_by_seed: Sequence[PerQuery], metric: str = "rank1",
                      a: str = "A", b: str = "B", seeds: Sequence[int] | None = None,
                      confidence: float = CONFIDENCE) -> Comparison:
    """A - B on `metric` ("rank1" or "mAP"), paired within each seed (entry s of both sequences is
    seed s, evaluated on the same queries in the same order), with the module's interval."""
    if len(a_by_seed) != len(b_by_seed) or not a_by_seed:
        raise ValueError(f"need the same number (>= 1) of seeds for A and B, got {len(a_by_seed)} and {len(b_by_seed)}")
    seeds = tuple(range(len(a_by_seed))) if seeds is None else tuple(int(s) for s in seeds)
    if len(seeds) != len(a_by_seed):
        raise ValueError(f"{len(seeds)} seed labels for {len(a_by_seed)} seeds")
    differences, means_a, means_b = [], [], []
    for seed, first, second in zip(seeds, a_by_seed, b_by_seed):
        _check_same_queries(first, second, f"{a} vs {b}, seed {seed}")
        values_a, values_b = _values(first, metric), _values(second, metric)
        if values_a.shape != values_b.shape:
            raise ValueError(f"{a} vs {b}, seed {seed}: {values_a.size} vs {values_b.size} queries")
        differences.append(values_a - values_b)
        means_a.append(values_a.mean())
        means_b.append(values_b.mean())
    result = estimate(differences, [first["pid"] for first in a_by_seed], confidence)
    several = len(seeds) > 1
    resolved = several and (result.low > 0 or result.high < 0)
    verdict = "not resolved" if not resolved else ("A better" if result.low > 0 else "B better")
    return Comparison(metric=metric, a=a, b=b, mean_a=float(np.mean(means_a)), mean_b=float(np.mean(means_b)),
                      diff=result.mean, per_seed=result.per_seed, seeds=seeds, ci_low=result.low,
                      ci_high=result.high, p_value=result.p_value, n_seeds=len(seeds),
                      n_queries=max(d.size for d in differences), n_ids=result.n_ids,
                      evidence=MULTI_SEED if several else ONE_SEED, resolved=resolved, verdict=verdict,
                      winner=None if not resolved else (a if result.low > 0 else b))


# --------------------------------------------------------------------------- many comparisons


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: reject where adjusted < the family-wise error."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = (p.size - np.arange(p.size)) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def add_holm(frame: pd.DataFrame, family: Sequence[str], alpha: float = FAMILY_ERROR) -> pd.DataFrame:
    """`family` (its columns' values joined), `p_holm` and `resolved_holm` for each comparison:
    the rows sharing the `family` columns form one family. One-seed rows are left out of it
    (p_holm NaN, never resolved)."""
    frame = frame.copy()
    if frame.empty:
        return frame.assign(family=pd.Series(dtype=str), p_holm=pd.Series(dtype=float),
                            resolved_holm=pd.Series(dtype=bool))
    frame["family"] = frame[list(family)].astype(str).agg(" / ".join, axis=1)
    frame["p_holm"] = np.nan
    for _, members in frame[frame["n_seeds"] > 1].groupby("family"):
        frame.loc[members.index, "p_holm"] = holm(members["p_value"].to_numpy())
    frame["resolved_holm"] = (frame["p_holm"] < alpha) & frame["resolved"].astype(bool)
    return frame


def resolvable_difference(frame: pd.DataFrame, metric: str = "rank1") -> dict | None:
    """The smallest difference the run's test split and seeds can resolve: the median half-width
    of its `metric` comparisons' intervals (a difference below it stays "not resolved")."""
    rows = frame[frame["metric"] == metric] if len(frame) else frame
    if rows.empty:
        return None
    half = float(((rows["ci_high"] - rows["ci_low"]) / 2).median())
    return {"metric": metric, "half_width": half, "n_queries": int(rows["n_queries"].max()),
            "n_ids": int(rows["n_ids"].max()), "n_seeds": int(rows["n_seeds"].max())}


def resolution_line(resolvable: Mapping, points: float = 100.0) -> str:
    """e.g. 'with 100 test queries (50 identities) and 1 seed, rank1 differences under about 10.3
    points cannot be resolved (one seed: queries only, ...); add seeds or test identities'."""
    seeds = resolvable["n_seeds"]
    caveat = ("; one seed measures query noise only and resolves nothing: run 3 or more seeds"
              if seeds == 1 else "")
    return (f"with {resolvable['n_queries']} test queries ({resolvable['n_ids']} identities) and {seeds} "
            f"seed{'s' if seeds != 1 else ''}, {resolvable['metric']} differences under about "
            f"{points * resolvable['half_width']:.1f} points cannot be resolved{caveat}; "
            "add seeds or test identities to see smaller ones")


# --------------------------------------------------------------------------- scenario rows


SettingKey = tuple[str, str, str, float]  # (adaptation, scenario name, criterion, flops_reduction)

COMPARISON_COLUMNS = ["comparison", "kind", "a", "b", "adaptation", "flops_reduction", "metric", "mean_a", "mean_b",
                      "diff", "ci_low", "ci_high", "p_value", "per_seed", "seeds", "n_seeds", "n_queries", "n_ids",
                      "evidence", "resolved", "verdict", "winner", "family", "p_holm", "resolved_holm", "half_width"]
SCENARIO_FAMILY = ("adaptation", "kind", "metric")  # one table of the report: Holm adjusts within it


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
                         metrics: Sequence[str] = ("rank1", "mAP")) -> pd.DataFrame:
    """One row per standard comparison and metric (columns COMPARISON_COLUMNS), paired over the
    seeds both sides have per-query results for; a comparison with no such seed is left out.
    Holm families: SCENARIO_FAMILY."""
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
                                       metric, a=label_a, b=label_b, seeds=seeds)
            records.append({"comparison": f"{label_a} vs {label_b}", "kind": kind, "adaptation": second[0],
                            "flops_reduction": max(first[3], second[3]), **result.as_dict()})
    frame = pd.DataFrame(records, columns=COMPARISON_COLUMNS[:COMPARISON_COLUMNS.index("family")])
    frame = add_holm(frame, SCENARIO_FAMILY)
    frame["half_width"] = (frame["ci_high"] - frame["ci_low"]) / 2  # the smallest |A - B| this row could resolve
    return frame[COMPARISON_COLUMNS]


def setting_intervals(rows: Sequence[Mapping], per_query: Callable[[Mapping], PerQuery | None] = per_query_of_row,
                      metric: str = "rank1") -> pd.DataFrame:
    """Per setting (scenario, criterion, flops_reduction, adaptation) with per-query results: the
    metric's mean over seeds and its interval (`{metric}_ci_low/_high`)."""
    records = []
    for (adaptation, name, criterion, reduction), by_seed in _per_query_by_setting(rows, per_query).items():
        interval = mean_interval([by_seed[s] for s in sorted(by_seed)], metric)
        records.append({"scenario": name, "criterion": criterion, "flops_reduction": reduction,
                        "adaptation": adaptation, f"{metric}_ci_low": interval.low, f"{metric}_ci_high": interval.high})
    return pd.DataFrame(records, columns=["scenario", "criterion", "flops_reduction", "adaptation",
                                          f"{metric}_ci_low", f"{metric}_ci_high"])


def with_holm(records: list[dict], family: Sequence[str]) -> list[dict]:
    """`add_holm` for a bench's list of comparison records (the `family` keys name one table)."""
    if not records:
        return records
    return comparison_records(add_holm(pd.DataFrame(records), family))


def comparison_records(frame: pd.DataFrame) -> list[dict]:
    """The comparisons as JSON-ready dicts (plain Python numbers, lists and booleans)."""
    return json.loads(frame.to_json(orient="records", double_precision=15))


def verdict_text(row: Mapping) -> str:
    """`resolved, X better` (after Holm too, where the row has a family), `X better on its own
    interval, not after Holm`, `not resolved`, or `one seed: queries only, no verdict`."""
    if row.get("n_seeds", 2) <= 1:
        return f"{ONE_SEED}, no verdict"
    if not row["resolved"]:
        return "not resolved"
    holm_checked = row.get("resolved_holm") is not None and not pd.isna(row.get("resolved_holm"))
    if holm_checked and not row["resolved_holm"]:
        return f"{row['winner']} better on its own interval, not after Holm"
    return f"resolved, {row['winner']} better"


def format_comparison(row: Mapping, points: float = 100.0) -> str:
    """One line, e.g. `prune_during[plfp] vs adapt_only (supervised, -0.5 FLOPs) rank1: -1.2 [-2.9, +0.4],
    per seed -0.9 -1.8 -0.9 (3 seeds): not resolved` or `...: resolved, adapt_only better`
    (differences in points; `verdict_text`)."""
    where = [f"{row['split']} test" if row.get("split") else "", row.get("adaptation") or "",
             f"-{row['flops_reduction']:g} FLOPs" if row.get("flops_reduction") else ""]
    where = ", ".join(part for part in where if part)
    per_seed = " ".join(f"{points * d:+.1f}" for d in row["per_seed"])
    return (f"{row['comparison']}{f' ({where})' if where else ''} {row['metric']}: {points * row['diff']:+.1f} "
            f"[{points * row['ci_low']:+.1f}, {points * row['ci_high']:+.1f}], per seed {per_seed} "
            f"({row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''}): {verdict_text(row)}")
