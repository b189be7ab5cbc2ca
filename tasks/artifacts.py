"""The run's answer in the Prefect UI: table, markdown and link artifacts of the report.

Each artifact has a key per profile (`prune-adapt-<profile>-results`, `-answer`, `-mlflow-run`,
and `-best-flops50-supervised` for each registry alias), so Prefect keeps one version per flow run under it and the Artifacts page compares
runs of the same grid side by side. Keys may hold lowercase letters, digits and dashes only.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pandas as pd
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from reid_models.answer import headline
from reid_models.config import Settings
from reid_models.report import load_comparisons, load_resolution

def mlflow_ui() -> str:
    """The MLflow UI the links point at: the one `make serve` started (it tells the serving
    process), else MLflow's default port (`mlflow ui`)."""
    return os.environ.get("REID_PRUNE_MLFLOW_UI", "http://127.0.0.1:5000")


def artifact_key(settings: Settings, what: str) -> str:
    profile = re.sub(r"[^a-z0-9-]+", "-", settings.profile.lower()).strip("-") or "default"
    return f"prune-adapt-{profile}-{what}"


def results_table(rows: list[dict], report_dir: Path) -> list[dict]:
    """One line per trained model and seed: what it costs and how it scores, as shipped too."""
    summary = pd.read_csv(report_dir / "summary.csv") if (report_dir / "summary.csv").is_file() else None
    intervals = {}
    if summary is not None and "rank1_ci_low" in summary:
        for item in summary.itertuples():
            intervals[(item.scenario, item.criterion, item.flops_reduction, item.adaptation)] = (
                item.rank1_ci_low, item.rank1_ci_high)
    table = []
    for row in sorted(rows, key=lambda r: (r["adaptation"], -r["flops"], r["name"], r["seed"])):
        low, high = intervals.get((row["name"], row["criterion"], row["flops_reduction"], row["adaptation"]),
                                  (None, None))
        table.append({
            "scenario": row["name"], "criterion": row["criterion"], "FLOPs cut": f"{100 * row['flops_reduction']:.0f}%",
            "adaptation": row["adaptation"], "seed": row["seed"], "GFLOPs": round(row["flops"] / 1e9, 3),
            "rank-1 %": round(100 * row["rank1"], 1),
            "rank-1 95% interval (over seeds)": "" if low is None or pd.isna(low) else
            f"[{100 * low:.1f}, {100 * high:.1f}]",
            "mAP %": round(100 * row["mAP"], 1),
            "shipped as": row.get("shipped_as", ""),
            "shipped rank-1 %": round(100 * row["shipped_rank1"], 1) if row.get("shipped_rank1") is not None else "",
            "shipped images/s": round(row["shipped_throughput_ips"]) if row.get("shipped_throughput_ips") else "",
        })
    return table


def answer_markdown(rows: list[dict], paths: dict, failed: list[dict]) -> str:
    """The three sentences, the FLOPs-vs-rank-1 figure (embedded: it shows without any other
    server), and the scenarios that failed, if any."""
    report_dir = Path(paths["csv"]).parent
    comparisons = load_comparisons(report_dir)
    resolution = load_resolution(report_dir)
    sentences = headline(rows, [] if comparisons is None else comparisons.to_dict("records"),
                         resolution["line"] if resolution else None)
    figure = base64.b64encode(Path(paths["plot"]).read_bytes()).decode()
    lines = ["# The answer of this run", "", *sentences, "",
             f"![FLOPs against target rank-1](data:image/png;base64,{figure})", "",
             f"Files: `{paths['csv']}`, `{paths['summary']}`, `{paths['plot']}`."]
    if failed:
        lines += ["", "## Failed scenarios", "", *(f"- `{item['scenario']}`: {item['error']}" for item in failed)]
    return "\n".join(lines)


def publish_report(settings: Settings, rows: list[dict], paths: dict, failed: list[dict],
                   experiment_id: str | None = None, parent_run_id: str | None = None,
                   registry_versions: dict[str, str] | None = None) -> None:
    """Table, markdown and links of this run, under the profile's stable keys."""
    report_dir = Path(paths["csv"]).parent
    create_table_artifact(results_table(rows, report_dir), key=artifact_key(settings, "results"),
                          description="Every trained model: cost, target rank-1 with its interval over seeds, "
                                      "mAP, and as shipped")
    create_markdown_artifact(answer_markdown(rows, paths, failed), key=artifact_key(settings, "answer"),
                             description="Where to prune, in three sentences, with the FLOPs-vs-rank-1 figure")
    if experiment_id and parent_run_id:
        create_link_artifact(f"{mlflow_ui()}/#/experiments/{experiment_id}/runs/{parent_run_id}",
                             link_text="this run in MLflow (a child run per scenario)",
                             key=artifact_key(settings, "mlflow-run"),
                             description="The MLflow parent run (needs `make serve` or the MLflow UI running)")
    name = settings.tracking.registered_model
    for alias, version in sorted((registry_versions or {}).items()):
        create_link_artifact(f"{mlflow_ui()}/#/models/{name}/versions/{version}",
                             link_text=f"{name} version {version} ({alias})", key=artifact_key(settings, alias),
                             description=f"Model Registry: the best model of {alias}")
