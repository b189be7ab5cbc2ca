"""Which committed verdicts survive the interval of issue 31, where the per-query files are gone.

    python -m bench.reverdict docs/bench/*_comparisons.json --csv docs/bench/verdict_audit.csv

The comparisons in docs/bench/ were written with the percentile bootstrap over seeds; most of
their per-query files were never kept, so their intervals cannot be recomputed. Their per-seed
differences can be read again, and they bound the verdict: the interval of `reid_models.stats`
is at least as wide as its seed term alone, t(S-1) * sd(d_s) / sqrt(S), at every confidence
level. So a comparison that this seed term does not resolve is *lost* for certain, before and
after Holm (the seed-only p-value is a lower bound of the real one, and Holm's adjustment is
monotone). One that the seed term resolves is *open*: the shared identity noise may still take
it; only re-running the seeds (bench.scenarios keeps per-query files now) decides. One-seed
records get no verdict at all.

Families for Holm: one file's records of one split, metric, kind and adaptation mode (the table
they were printed in).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as distributions

from reid_models.stats import FAMILY_ERROR, add_holm


def load_records(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["comparisons"] if isinstance(data, dict) else data


def seed_term_bound(per_seed: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high, p) of the seed-only t-interval of the mean of `per_seed` (>= 2 seeds)."""
    values = np.asarray(per_seed, dtype=np.float64)
    mean, se = values.mean(), values.std(ddof=1) / np.sqrt(values.size)
    dof = values.size - 1
    if se == 0:
        return mean, mean, 0.0 if mean != 0 else 1.0
    half = distributions.t.ppf(0.5 + confidence / 2, dof) * se
    return mean - half, mean + half, float(2 * distributions.t.sf(abs(mean) / se, dof))


def audit(paths: list[Path]) -> pd.DataFrame:
    records = []
    for path in paths:
        for record in load_records(path):
            if "p_holm" in record:
                continue  # written with the new interval already: nothing to audit
            kind = record.get("kind") or ("allocations" if " vs " in str(record.get("allocation", "")) else "")
            row = {"file": path.name, "comparison": record["comparison"], "split": record.get("split", "test"),
                   "metric": record["metric"], "kind": kind, "adaptation": record.get("adaptation"),
                   "flops_reduction": record.get("flops_reduction"), "n_seeds": record["n_seeds"],
                   "diff": record["diff"], "old_low": record["ci_low"], "old_high": record["ci_high"],
                   "old_resolved": bool(record["resolved"])}
            if record["n_seeds"] > 1:
                row["seed_low"], row["seed_high"], row["seed_p"] = seed_term_bound(record["per_seed"])
            records.append(row)
    frame = pd.DataFrame(records)
    frame["adaptation"] = frame["adaptation"].fillna("")
    adjusted = add_holm(frame.assign(p_value=frame["seed_p"], resolved=True),
                        ("file", "split", "metric", "kind", "adaptation"))
    frame["family"], frame["seed_p_holm"] = adjusted["family"], adjusted["p_holm"]
    seed_resolved = (frame["seed_low"] > 0) | (frame["seed_high"] < 0)
    frame["now"] = np.select(
        [frame["n_seeds"] <= 1, ~frame["old_resolved"], ~seed_resolved, frame["seed_p_holm"] >= FAMILY_ERROR],
        ["one seed: no verdict", "not resolved (was not)", "lost", "lost after Holm"],
        default="open: re-run to decide")
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="write the audit here")
    args = parser.parse_args()
    frame = audit(args.files)
    if args.csv:
        frame.to_csv(args.csv, index=False, float_format="%.5f")
    was = frame[frame["old_resolved"]]
    print(f"{len(was)} of {len(frame)} records were resolved under the old bootstrap:")
    print(was.groupby("now").size().to_string())
    multi = was[was["n_seeds"] > 1]
    print(f"of the {len(multi)} multi-seed ones: {int((multi['now'] == 'lost').sum())} lost to the seed term alone, "
          f"{int((multi['now'] == 'lost after Holm').sum())} more lost after Holm, "
          f"{int((multi['now'] == 'open: re-run to decide').sum())} open")


if __name__ == "__main__":
    main()
