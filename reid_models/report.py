"""The scenario grid's results: a pandas table, its Pareto front, the FLOPs-vs-rank-1 plot with
95% intervals, and the paired comparisons between settings (`reid_models.stats`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from reid_models import stats
from reid_models.checkpoint import atomic_write, save_json

# One marker per scenario, one colour per adaptation mode.
MARKERS = {"source_only": "x", "adapt_only": "o", "adapt_short": "v", "prune_before": "<", "prune_during": "s",
           "prune_after": ">", "small_dense": "D"}
COLOURS = {"supervised": "tab:blue", "unsupervised": "tab:orange", "none": "tab:gray"}
SETTINGS_COLUMNS = ["scenario", "criterion", "flops_reduction", "adaptation"]
# What the model is as shipped (reid_models.shipping.ship_scenario): ONNX Runtime, int8 by default.
SHIPPED_COLUMNS = ["shipped_rank1", "shipped_mAP", "shipped_size_bytes", "shipped_latency_ms", "shipped_throughput_ips"]


def results_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([{k: v for k, v in row.items() if k != "shipped_variants"} for row in rows])
    frame = frame.rename(columns={"name": "scenario"})
    frame["gflops"] = frame["flops"] / 1e9
    frame["params_m"] = frame["params"] / 1e6
    return frame.sort_values(["adaptation", "flops", "scenario"], ascending=[True, False, True], ignore_index=True)


def shipped_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per final model and `ship.quantize` choice (rows' `shipped_variants`): what each
    shipped file scores and costs under ONNX Runtime, beside the PyTorch model's rank-1."""
    keep = ["name", "criterion", "flops_reduction", "adaptation", "seed", "flops", "rank1", "mAP"]
    records = [{**{k: row.get(k) for k in keep}, **variant}
               for row in rows for variant in row.get("shipped_variants") or []]
    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame(records).rename(columns={"name": "scenario", "rank1": "pytorch_rank1", "mAP": "pytorch_mAP"})
    frame["gflops"] = frame.pop("flops") / 1e9
    frame["shipped_mb"] = frame["shipped_size_bytes"] / 1e6
    return frame.sort_values(["adaptation", "gflops", "scenario", "seed"], ascending=[True, False, True, True],
                             ignore_index=True)


def pareto_front(frame: pd.DataFrame, cost: str = "flops", quality: str = "rank1") -> pd.Series:
    """True for rows no other row of the same adaptation mode beats on both cost and quality."""
    front = pd.Series(False, index=frame.index)
    for _, group in frame.groupby("adaptation"):
        best = -1.0
        for index, row in group.sort_values([cost, quality], ascending=[True, False]).iterrows():
            if row[quality] > best:
                front[index], best = True, row[quality]
    return front


def summary_over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (min-max) of each setting over its seeds."""
    metrics = {"gflops": "mean", "params_m": "mean", "latency_ms": "mean", "rank1": ["mean", "min", "max", "count"],
               "mAP": "mean", "mINP": "mean", "source_rank1": "mean", "images_seen": "first"}
    metrics.update({column: "mean" for column in SHIPPED_COLUMNS if column in frame})
    table = frame.groupby(SETTINGS_COLUMNS, sort=False).agg(metrics)
    table.columns = ["_".join(c) if c[1] not in ("mean", "first") else c[0] for c in table.columns]
    return table.rename(columns={"rank1_count": "seeds"}).reset_index()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    _pyplot().close(figure)
    return atomic_write(path, buffer.getvalue())  # no half-written plot if the run dies or the disk is full


def plot_cmc(cmc: list[float], title: str, path: str | Path) -> Path:
    """A scenario's CMC curve on the target test split: rank-k accuracy for k = 1..max_rank."""
    figure, axes = _pyplot().subplots(figsize=(5, 3.5))
    axes.plot(range(1, len(cmc) + 1), [100 * value for value in cmc], marker=".")
    axes.set_xlabel("rank k")
    axes.set_ylabel("matching rate within k (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    return _save_figure(figure, path)


def plot_flops_vs_rank1(frame: pd.DataFrame, path: str | Path, intervals: pd.DataFrame | None = None) -> Path:
    """One marker per setting at its mean over seeds; with `intervals` (`stats.setting_intervals`),
    a bar for each setting's 95% interval of rank-1."""
    shipped = "shipped_rank1" in frame and frame["shipped_rank1"].notna().any()
    columns = ["flops", "gflops", "rank1"] + (["shipped_rank1"] if shipped else [])
    points = frame.groupby(SETTINGS_COLUMNS, as_index=False, sort=False)[columns].mean()
    if intervals is not None and not intervals.empty:
        points = points.merge(intervals, on=SETTINGS_COLUMNS, how="left")
    figure, axes = _pyplot().subplots(figsize=(7, 4.5))
    for (scenario, adaptation), group in points.groupby(["scenario", "adaptation"]):
        colour = COLOURS.get(adaptation, "black")
        axes.scatter(group["gflops"], 100 * group["rank1"], marker=MARKERS.get(scenario, "."),
                     color=colour, s=60, label=f"{scenario} ({adaptation})")
        if shipped:  # the same model as shipped (int8 ONNX): hollow, at the same FLOPs
            axes.scatter(group["gflops"], 100 * group["shipped_rank1"], marker=MARKERS.get(scenario, "."),
                         facecolors="none", edgecolors=colour, s=60)
        if "rank1_ci_low" in group:
            bounded = group.dropna(subset=["rank1_ci_low", "rank1_ci_high"])
            below = np.clip(bounded["rank1"] - bounded["rank1_ci_low"], 0, None)
            above = np.clip(bounded["rank1_ci_high"] - bounded["rank1"], 0, None)
            axes.errorbar(bounded["gflops"], 100 * bounded["rank1"], yerr=[100 * below, 100 * above], fmt="none",
                          ecolor=colour, elinewidth=1, capsize=3, alpha=0.7)
    front = points[pareto_front(points)]
    for adaptation, group in front.groupby("adaptation"):
        ordered = group.sort_values("gflops")
        axes.step(ordered["gflops"], 100 * ordered["rank1"], where="post", color=COLOURS.get(adaptation, "black"),
                  alpha=0.5, linestyle="--")
    axes.set_xlabel("GFLOPs per image (physically pruned model)")
    axes.set_ylabel("target rank-1 (%)")
    hollow = "; hollow: as shipped, " + str(frame["shipped_as"].iloc[0]) if shipped and "shipped_as" in frame else ""
    axes.set_title("Where to prune: FLOPs vs rank-1 on the new cameras\n(mean over seeds; bars: 95% "
                   f"interval; dashed: Pareto front{hollow})", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return _save_figure(figure, path)


def save_results(rows: list[dict], out_dir: str | Path) -> dict[str, str]:
    """results.csv / .parquet (one row per run), summary.csv (over seeds), the plot, metrics.json;
    and, for rows whose `result_dir` holds per_query.npz, comparisons.csv (`stats.scenario_comparisons`,
    with Holm's verdicts), resolution.json (the smallest rank-1 difference the run can resolve:
    `stats.resolvable_difference`) and 95% intervals of rank-1 in summary.csv and the plot."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = results_frame(rows)
    frame["pareto"] = pareto_front(frame)
    loaded = {row.get("result_dir"): stats.per_query_of_row(row) for row in rows}  # each file read once

    def per_query(row):
        return loaded[row.get("result_dir")]

    intervals = stats.setting_intervals(rows, per_query)
    summary = summary_over_seeds(frame)
    if not intervals.empty:
        summary = summary.merge(intervals, on=SETTINGS_COLUMNS, how="left")
    comparisons = stats.scenario_comparisons(rows, per_query)
    shipped = shipped_frame(rows)
    paths = {"csv": out_dir / "results.csv", "parquet": out_dir / "results.parquet",
             "summary": out_dir / "summary.csv", "plot": out_dir / "flops_vs_rank1.png",
             "metrics": out_dir / "metrics.json", "comparisons": out_dir / "comparisons.csv",
             "shipped": out_dir / "shipped.csv", "resolution": out_dir / "resolution.json"}
    contents = {"csv": lambda: frame.to_csv(index=False).encode(), "parquet": lambda: frame.to_parquet(index=False),
                "summary": lambda: summary.to_csv(index=False).encode()}
    resolvable = stats.resolvable_difference(comparisons)
    if resolvable is not None:
        resolvable["line"] = stats.resolution_line(resolvable)
        contents["resolution"] = lambda: (json.dumps(resolvable, indent=2) + "\n").encode()
    else:
        paths.pop("resolution").unlink(missing_ok=True)
    # Optional tables: none without per-query results / shipped models, and none left from an earlier run.
    for kind, table in (("comparisons", comparisons), ("shipped", shipped)):
        if table.empty:
            paths.pop(kind).unlink(missing_ok=True)
        else:
            contents[kind] = lambda table=table: table.to_csv(index=False).encode()
    for kind, content in contents.items():
        atomic_write(paths[kind], content())
    plot_flops_vs_rank1(frame, paths["plot"], intervals)
    metrics = {f"{row.scenario}-{row.criterion}-{row.flops_reduction:g}-{row.adaptation}-seed{row.seed}":
               {"gflops": round(row.gflops, 4), "rank1": row.rank1, "mAP": row.mAP, "mINP": row.mINP}
               for row in frame.itertuples()}
    save_json(paths["metrics"], metrics)
    return {kind: str(path) for kind, path in paths.items()}


def load_results(out_dir: str | Path) -> pd.DataFrame:
    path = Path(out_dir) / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}; run `reid-prune run` (or `dvc repro`) first")
    return pd.read_csv(path)


def load_resolution(out_dir: str | Path) -> dict | None:
    """resolution.json of a report folder (`save_results`), or None without comparisons."""
    path = Path(out_dir) / "resolution.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_comparisons(out_dir: str | Path) -> pd.DataFrame | None:
    """comparisons.csv of a report folder (per_seed and seeds as lists again), or None if absent."""
    path = Path(out_dir) / "comparisons.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    for column in ("per_seed", "seeds"):
        frame[column] = frame[column].map(json.loads)
    return frame
