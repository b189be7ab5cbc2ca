"""Where to prune, with evidence: the scenario grid over seeds, and the four questions it answers.

    python -m bench.scenarios --profile full --seeds 0,1,2 --json docs/bench/scenarios_full.json

For each seed the whole pipeline runs (pretraining included, so the spread covers it): the
source model, the thin dense model, then every scenario of `params.yaml`'s grid with equal
training images after pretraining. It calls the core directly (no Prefect, no MLflow); the
seed equal to `params.yaml`'s `seed` writes where `reid-prune run` does, so either reuses the
other's finished scenarios. Rank-1/mAP are on the target test split (new cameras).

Claims rest on paired comparisons (`reid_models.stats`): scenarios of one seed share the source
model and the test queries, so each comparison is the mean over seeds of the per-seed difference,
with a 95% interval over seeds and query identities; a winner is stated only where Holm's
correction within the comparison's table keeps it (`resolved_holm`). `--json X.json` gets the rows (a list, as
before) and `X_comparisons.json` the comparisons (a list of `stats.COMPARISON_COLUMNS` records).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import torch

from bench.settings_cli import settings_parser
from reid_models import stages
from reid_models.answer import answers
from reid_models.config import Settings, load_settings
from reid_models.report import load_comparisons, plot_flops_vs_rank1, results_frame, save_results
from reid_models.scenarios import check_budget, expand_grid, pretrain_small_dense, run_scenario
from reid_models.stats import (comparison_records, format_comparison, per_query_from_archive, resolution_line,
                               resolvable_difference, save_per_query_archive, scenario_comparisons, setting_intervals)


def seed_overrides(base: Settings, seed: int) -> list[str]:
    """Overrides for one seed: the default seed shares `reid-prune run`'s outputs, any other seed
    gets its own (outputs/seeds/seedN: its own source model and runs)."""
    extra = [f"seed={seed}"]
    if seed != base.seed:
        extra.append(f"outputs={Path(base.outputs) / 'seeds' / f'seed{seed}'}")
    return extra


def comparisons_path(json_path: Path) -> Path:
    """Where a bench writes its comparisons beside its rows: X.json -> X_comparisons.json."""
    return json_path.with_name(f"{json_path.stem}_comparisons.json")


def per_query_path(json_path: Path) -> Path:
    """Where bench.scenarios keeps the rows' per-query results: X.json -> X_per_query.npz."""
    return json_path.with_name(f"{json_path.stem}_per_query.npz")


def settings_for_seed(params: str, profile: str, overrides: list[str], seed: int) -> Settings:
    base = load_settings(params, profile, overrides)
    extra = [*seed_overrides(base, seed), f"scenarios.seeds=[{seed}]"]
    settings = load_settings(params, profile, [*overrides, *extra])
    check_budget(settings)
    return settings


def run_seed(settings: Settings) -> list[dict]:
    # Scenarios at `orchestration.torch_threads`, as `reid-prune run`'s tasks run them (pretraining
    # pins it itself), so a seed's figures are the same from either command on any machine.
    torch.set_num_threads(settings.orchestration.torch_threads)
    for domain in ("source", "target"):
        stages.prepare_domain(domain, getattr(settings.data, domain), settings.data)
    outputs = Path(settings.outputs)
    source = stages.pretrain(settings, outputs / "pretrain")["checkpoint"]  # resumes, or reuses a finished one
    rows = []
    for scenario in expand_grid(settings):
        small_dense = None
        if scenario.name == "small_dense":
            small_dense = pretrain_small_dense(settings, scenario.flops_reduction,
                                               outputs / "scenarios" / f"small_dense_source_{scenario.flops_reduction:g}")
        row = run_scenario(scenario, settings, source, outputs / "scenarios" / scenario.key, small_dense)
        logging.info("%s: rank1 %.3f mAP %.3f GFLOPs %.3f (%.0f s)", scenario.key, row["rank1"], row["mAP"],
                     row["flops"] / 1e9, row["seconds"])
        rows.append(row)
    return rows


def print_comparisons(rows: list[dict], comparisons: list[dict], json_path: Path | None) -> None:
    """Write the comparisons beside the rows' JSON, and print them with the grid's answers."""
    if json_path:
        comparisons_path(json_path).write_text(json.dumps(comparisons, indent=2) + "\n")
    print("paired comparisons, A - B in points over seeds with a 95% interval (seeds and query identities); "
          "resolved = the interval excludes 0 and Holm's correction within its table keeps it:")
    for comparison in comparisons:
        print(format_comparison(comparison))
    for line in answers(rows, comparisons):
        print(line)
    if comparisons and (resolvable := resolvable_difference(pd.DataFrame(comparisons))):
        print(f"how sure: {resolution_line(resolvable)}")


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; each reruns the whole pipeline")
    parser.add_argument("--json", type=Path, help="write the rows here (after every seed), the paired comparisons "
                                                  "beside it as <stem>_comparisons.json and the per-query results "
                                                  "as <stem>_per_query.npz")
    parser.add_argument("--from-json", action="store_true", help="train nothing: recompute the comparisons of "
                        "--json's rows from its <stem>_per_query.npz (e.g. after a change of reid_models.stats) "
                        "and draw <stem>.png (FLOPs vs rank-1 with intervals)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.from_json:
        if not args.json or not per_query_path(args.json).is_file():
            parser.error("--from-json needs --json X.json with X_per_query.npz beside it")
        rows = json.loads(args.json.read_text())
        per_query = per_query_from_archive(per_query_path(args.json))
        frame = scenario_comparisons(rows, per_query)
        print_comparisons(rows, comparison_records(frame), args.json)
        plain = [{k: v for k, v in row.items() if k not in ("scenario", "target_reduction")} for row in rows]
        plot = plot_flops_vs_rank1(results_frame(plain), args.json.with_suffix(".png"),
                                   setting_intervals(plain, per_query))
        print(f"plot: {plot}")
        return

    seeds = [int(s) for s in args.seeds.split(",")]
    all_settings = [settings_for_seed(args.params, args.profile, args.overrides, s) for s in seeds]  # fail fast
    rows: list[dict] = []
    for settings in all_settings:
        rows += run_seed(settings)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            published = [{"scenario": r["name"], "target_reduction": r["flops_reduction"], **r} for r in rows]
            args.json.write_text(json.dumps(published, indent=2) + "\n")
    if args.json:
        save_per_query_archive(per_query_path(args.json), rows)
    paths = save_results(rows, Path(all_settings[0].outputs) / "bench" / "scenarios")
    print(f"{'scenario':>13} {'criterion':>9} {'FLOPs-':>6} {'adaptation':>12} {'seed':>4} {'GFLOPs':>7} "
          f"{'rank1':>6} {'mAP':>6} {'images':>7}")
    for r in rows:
        print(f"{r['name']:>13} {r['criterion']:>9} {r['flops_reduction']:>6g} {r['adaptation']:>12} {r['seed']:>4} "
              f"{r['flops'] / 1e9:>7.3f} {100 * r['rank1']:>6.1f} {100 * r['mAP']:>6.1f} {r['images_seen']:>7}")
    frame = load_comparisons(Path(paths["csv"]).parent)
    print_comparisons(rows, [] if frame is None else comparison_records(frame), args.json)
    print(f"table: {paths['summary']}  plot: {paths['plot']}")


if __name__ == "__main__":
    main()
