"""Where to prune, with evidence: the scenario grid over seeds, and the four questions it answers.

    python -m bench.scenarios --profile default --seeds 0,1 --json docs/bench/scenarios_default.json

For each seed the whole pipeline runs (pretraining included, so the spread covers it): the
source model, the thin dense model, then every scenario of `params.yaml`'s grid with equal
training images after pretraining. It calls the core directly (no Prefect, no MLflow); the
seed equal to `params.yaml`'s `seed` writes where `reid-prune run` does, so either reuses the
other's finished scenarios. Rank-1/mAP are on the target test split (new cameras).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from reid_models import stages
from reid_models.config import Settings, load_settings
from reid_models.report import save_results
from reid_models.scenarios import check_budget, expand_grid, pretrain_small_dense, run_scenario

PRUNED = ("prune_before", "prune_during", "prune_after")


def settings_for_seed(params: str, profile: str, overrides: list[str], seed: int) -> Settings:
    base = load_settings(params, profile, overrides)
    extra = [f"seed={seed}", f"scenarios.seeds=[{seed}]"]
    if seed != base.seed:  # the default seed shares `reid-prune run`'s outputs
        extra.append(f"outputs={Path(base.outputs) / 'seeds' / f'seed{seed}'}")
    settings = load_settings(params, profile, [*overrides, *extra])
    check_budget(settings)
    return settings


def run_seed(settings: Settings) -> list[dict]:
    for domain in ("source", "target"):
        stages.prepare_domain(domain, getattr(settings.data, domain), settings.data, settings.seed)
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


def mean_rank1(rows: list[dict], **match) -> float | None:
    values = [r["rank1"] for r in rows if all(r[k] == v for k, v in match.items())]
    return statistics.mean(values) if values else None


def answers(rows: list[dict]) -> list[str]:
    """The issue's four questions, answered from the rows (means over seeds)."""
    lines = []
    modes = sorted({r["adaptation"] for r in rows} - {"none"})
    for mode in modes:
        reference = mean_rank1(rows, name="adapt_only", adaptation=mode)
        pruned = sorted({(r["name"], r["criterion"], r["flops_reduction"]) for r in rows
                         if r["name"] in PRUNED and r["adaptation"] == mode})
        scored = [(mean_rank1(rows, name=n, criterion=c, flops_reduction=f, adaptation=mode), n, c, f)
                  for n, c, f in pruned]
        if reference is None or not scored:
            continue
        best = max(scored)
        within = [s for s in scored if s[3] >= 0.5 and s[0] >= reference - 0.01]
        lines.append(f"{mode}: adapt_only rank1 {100 * reference:.1f}; best pruned {best[1]} ({best[2]}, "
                     f"-{best[3]:g} FLOPs) {100 * best[0]:.1f}; halves FLOPs within 1 point of adapt_only: "
                     f"{', '.join(s[1] for s in within) or 'none'}")
        for reduction in sorted({s[3] for s in scored}):
            dense = mean_rank1(rows, name="small_dense", flops_reduction=reduction, adaptation=mode)
            at = max(s for s in scored if s[3] == reduction)
            if dense is not None:
                lines.append(f"{mode} @ -{reduction:g} FLOPs: best pruned {at[1]} {100 * at[0]:.1f} vs small_dense "
                             f"{100 * dense:.1f}")
    source_only = mean_rank1(rows, name="source_only")
    supervised = mean_rank1(rows, name="adapt_only", adaptation="supervised")
    unsupervised = mean_rank1(rows, name="adapt_only", adaptation="unsupervised")
    if None not in (source_only, supervised, unsupervised) and supervised > source_only:
        closed = (unsupervised - source_only) / (supervised - source_only)
        lines.append(f"direct transfer {100 * source_only:.1f} -> unsupervised {100 * unsupervised:.1f} "
                     f"(supervised {100 * supervised:.1f}): unsupervised closes {100 * closed:.0f}% of the gap")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", choices=["quick", "default"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY.PATH=VALUE")
    parser.add_argument("--seeds", default="0,1", help="comma-separated; each reruns the whole pipeline")
    parser.add_argument("--json", type=Path, help="write the rows here (after every seed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    seeds = [int(s) for s in args.seeds.split(",")]
    all_settings = [settings_for_seed(args.params, args.profile, args.overrides, s) for s in seeds]  # fail fast
    rows: list[dict] = []
    for settings in all_settings:
        rows += run_seed(settings)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            published = [{"scenario": r["name"], "target_reduction": r["flops_reduction"], **r} for r in rows]
            args.json.write_text(json.dumps(published, indent=2) + "\n")
    paths = save_results(rows, Path(all_settings[0].outputs) / "bench" / "scenarios")
    print(f"{'scenario':>13} {'criterion':>9} {'FLOPs-':>6} {'adaptation':>12} {'seed':>4} {'GFLOPs':>7} "
          f"{'rank1':>6} {'mAP':>6} {'images':>7}")
    for r in rows:
        print(f"{r['name']:>13} {r['criterion']:>9} {r['flops_reduction']:>6g} {r['adaptation']:>12} {r['seed']:>4} "
              f"{r['flops'] / 1e9:>7.3f} {100 * r['rank1']:>6.1f} {100 * r['mAP']:>6.1f} {r['images_seen']:>7}")
    for line in answers(rows):
        print(line)
    print(f"table: {paths['summary']}  plot: {paths['plot']}")


if __name__ == "__main__":
    main()
