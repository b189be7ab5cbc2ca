"""The scenario grid's results: a pandas table, its Pareto front, the FLOPs-vs-rank-1 plot with
95% intervals, and the paired comparisons between settings (`reid_models.stats`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from reid_models import stats
from reid_models.checkpoint import atomic_write, save_json

# The FLOPs-vs-rank-1 plot: a colour per setting (scenario and criterion), a marker per adaptation.
ADAPTATION_MARKERS = {"supervised": "o", "unsupervised": "^", "none": "X"}
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
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")  # nothing clipped: title, outside legend
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


def _dodged(points: pd.DataFrame, width: float) -> pd.Series:
    """x positions: settings that share a GFLOPs value (e.g. the five -50% models) spread
    sideways around it, `width` apart, so markers and interval bars do not hide each other."""
    x = points["gflops"].astype(float).copy()
    for _, same in points.groupby(points["gflops"].round(3)):
        for rank, index in enumerate(same.sort_values(SETTINGS_COLUMNS).index):
            x[index] += (rank - (len(same) - 1) / 2) * width
    return x


def plot_flops_vs_rank1(frame: pd.DataFrame, path: str | Path, intervals: pd.DataFrame | None = None) -> Path:
    """One marker per setting at its mean over seeds: a colour per scenario (criterion), a marker per
    adaptation; settings at the same GFLOPs dodged sideways; with `intervals`
    (`stats.setting_intervals`) a bar for each setting's 95% interval of rank-1; the shipped model
    (hollow) just right of its PyTorch model, joined by a thin line."""
    plt = _pyplot()
    shipped = "shipped_rank1" in frame and frame["shipped_rank1"].notna().any()
    columns = ["flops", "gflops", "rank1"] + (["shipped_rank1"] if shipped else [])
    points = frame.groupby(SETTINGS_COLUMNS, as_index=False, sort=False)[columns].mean()
    if intervals is not None and not intervals.empty:
        points = points.merge(intervals, on=SETTINGS_COLUMNS, how="left")
    points["label"] = [stats.setting_label(s, c) for s, c in zip(points["scenario"], points["criterion"])]
    span = float(points["gflops"].max() - points["gflops"].min()) or float(points["gflops"].max()) or 1.0
    width = 0.025 * span
    points["x"] = _dodged(points, width)
    palette = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    colours = {label: palette[i % len(palette)] for i, label in enumerate(dict.fromkeys(points["label"]))}
    figure, axes = plt.subplots(figsize=(9, 5))
    for row in points.itertuples():
        colour, marker = colours[row.label], ADAPTATION_MARKERS.get(row.adaptation, ".")
        axes.scatter(row.x, 100 * row.rank1, marker=marker, color=colour, s=55, zorder=3)
        if "rank1_ci_low" in points and not pd.isna(row.rank1_ci_low):
            low, high = max(0.0, row.rank1_ci_low), min(1.0, row.rank1_ci_high)  # a rate: within [0, 100] %
            below, above = max(0.0, row.rank1 - low), max(0.0, high - row.rank1)
            axes.errorbar(row.x, 100 * row.rank1, yerr=[[100 * below], [100 * above]], fmt="none", ecolor=colour,
                          elinewidth=1, capsize=3, alpha=0.8, zorder=2)
        if shipped and not pd.isna(row.shipped_rank1):
            beside = row.x + width / 2
            axes.plot([row.x, beside], [100 * row.rank1, 100 * row.shipped_rank1], color=colour, linewidth=0.7)
            axes.scatter(beside, 100 * row.shipped_rank1, marker=marker, facecolors="none", edgecolors=colour,
                         s=55, zorder=3)
    front = points[pareto_front(points)]
    for adaptation, group in front.groupby("adaptation"):
        ordered = group.sort_values("gflops")
        axes.step(ordered["x"], 100 * ordered["rank1"], where="post", color="0.5", alpha=0.6, linestyle="--",
                  linewidth=1)
    handles = [plt.Line2D([], [], color=colour, marker="o", linestyle="", label=label)
               for label, colour in colours.items()]
    handles += [plt.Line2D([], [], color="0.3", marker=ADAPTATION_MARKERS.get(a, "."), linestyle="", label=a)
                for a in dict.fromkeys(points["adaptation"])]
    if shipped:
        as_shipped = str(frame["shipped_as"].dropna().iloc[0]) if "shipped_as" in frame else "shipped"
        handles.append(plt.Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="",
                                  label=f"as shipped ({as_shipped})"))
    axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes.set_xlabel("GFLOPs per image (physically pruned model; settings at one budget spread sideways)")
    axes.set_ylabel("target rank-1 (%)")
    axes.set_title("FLOPs vs rank-1 on the new cameras: mean over seeds, bars 95% interval, "
                   "dashed Pareto front", fontsize=10, loc="left")
    axes.grid(alpha=0.3)
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
