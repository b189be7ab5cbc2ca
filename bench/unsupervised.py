"""Unsupervised adaptation to the new cameras: what each change of issue 14 buys.

    python -m bench.unsupervised --profile full --seeds 0,1,2 --json docs/bench/unsupervised_full.json

For each seed (its own source model, shared with `bench.scenarios` and `reid-prune run`) `PLAN`
runs, most important first: the two ends of the gap (direct transfer, i.e. source_only, and
supervised adapt_only), unsupervised adapt_only with the first recipe (`rounds`: a new random
identity head each round, 3 rounds of 2 epochs, pruned runs clustering their own features), then
one change at a time: the cluster memory head
(`adapt.head: memory`), re-clustering every epoch (`adapt.epochs_per_round: 1`), both, a mean
teacher's features for the clustering (`adapt.mean_teacher: 0.95`), camera proxies in the loss
(`adapt.memory.camera_proxies`, against the memory alone), and
prune_during with the default, with the memory, and with pseudo-labels from its unpruned teacher
(`adapt.pseudo_labels: teacher`; the mean teacher, or the frozen source model), and the other
stages with and without the two changes that helped (today's defaults: `per_epoch`,
`teacher_labels_per_epoch`). Every variant, the first recipe included, writes under
outputs/.../ablations/<variant>/ and states what it sets, so a new default changes no label's meaning;
the supervised ends of the gap write where `bench.scenarios` does (either reuses the other's results).

Comparisons are paired within seeds (`reid_models.stats`: mean of per-seed differences, 95%
interval over seeds and query identities, Holm-adjusted within each table: `resolved_holm`), on
the target test and validation splits: each variant against the run it changes. Printed too: the share
of the direct-transfer-to-supervised gap each unsupervised adapt_only closes, per seed (issue 14's
goal: at least 85%, seed spread under 3 points). `--only` and `--finished-only` as in
`bench.recovery`.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from bench.recovery import Run, compare_pairs, run_seeds
from bench.scenarios import comparisons_path
from bench.settings_cli import settings_parser
from reid_models.stats import format_comparison

# -S overrides on top of params.yaml, explicit about what they change, so a later change of
# default does not change what a variant means.
STUDENT = "adapt.pseudo_labels=student"  # pruned runs cluster their own features (the first recipe)
VARIANTS: dict[str, list[str]] = {
    "default": [],  # the supervised ends of the gap, which read none of these settings
    "rounds": ["adapt.head=classifier", "adapt.epochs_per_round=2", STUDENT],  # the first recipe
    "memory": ["adapt.head=memory", "adapt.epochs_per_round=2", STUDENT],
    "per_epoch": ["adapt.head=classifier", "adapt.epochs_per_round=1", STUDENT],
    "memory_per_epoch": ["adapt.head=memory", "adapt.epochs_per_round=1", STUDENT],
    "mean_teacher": ["adapt.head=classifier", "adapt.epochs_per_round=2", "adapt.mean_teacher=0.95", STUDENT],
    "memory_camera": ["adapt.head=memory", "adapt.epochs_per_round=2", "adapt.memory.camera_proxies=true", STUDENT],
    "memory_instances": ["adapt.head=memory", "adapt.epochs_per_round=2", "adapt.memory.outliers=instances", STUDENT],
    # the label-free radius: the quantile of each round's neighbour distances that gives eps 0.4 on
    # the source model's validation features (bench.clustering), so round 1 clusters alike
    "eps_quantile": ["adapt.head=classifier", "adapt.epochs_per_round=2", "adapt.cluster.eps_quantile=0.1", STUDENT],
    # pruned runs: pseudo-labels from the unpruned teacher -- prune_during's mean teacher of the
    # adapting model, or the source model it started from (frozen)
    "teacher_labels": ["adapt.head=classifier", "adapt.epochs_per_round=2", "adapt.pseudo_labels=teacher",
                       "prune.during_teacher=ema"],
    "teacher_labels_per_epoch": ["adapt.head=classifier", "adapt.epochs_per_round=1", "adapt.pseudo_labels=teacher",
                                 "prune.during_teacher=ema"],
    "teacher_labels_start": ["adapt.head=classifier", "adapt.epochs_per_round=2", "adapt.pseudo_labels=teacher",
                             "prune.during_teacher=start"],
}


def _unsup(label: str, scenario: str, variant: str, versus: str | None = None) -> Run:
    return Run(label, scenario, "unsupervised", variant, "default", versus)


# Most important first: an interrupted run still answers the main question.
PLAN: list[Run] = [
    Run("source_only", "source_only", "none"),
    Run("adapt_only_supervised", "adapt_only", "supervised"),
    _unsup("adapt_only", "adapt_only", "rounds"),
    _unsup("adapt_only_memory", "adapt_only", "memory", versus="adapt_only"),
    _unsup("adapt_only_per_epoch", "adapt_only", "per_epoch", versus="adapt_only"),
    _unsup("adapt_only_memory_per_epoch", "adapt_only", "memory_per_epoch", versus="adapt_only_memory"),
    _unsup("adapt_only_mean_teacher", "adapt_only", "mean_teacher", versus="adapt_only"),
    _unsup("adapt_only_memory_camera", "adapt_only", "memory_camera", versus="adapt_only_memory"),
    _unsup("adapt_only_eps_quantile", "adapt_only", "eps_quantile", versus="adapt_only"),
    _unsup("adapt_only_memory_instances", "adapt_only", "memory_instances", versus="adapt_only_memory"),
    _unsup("prune_during", "prune_during", "rounds", versus="adapt_only"),
    _unsup("prune_during_memory", "prune_during", "memory", versus="prune_during"),
    _unsup("prune_during_teacher_labels", "prune_during", "teacher_labels", versus="prune_during"),
    _unsup("prune_during_teacher_labels_start", "prune_during", "teacher_labels_start",
           versus="prune_during_teacher_labels"),
    # the two changes that helped, together, against the best unpruned run (issue 14's 3-point goal)
    _unsup("prune_during_teacher_labels_per_epoch", "prune_during", "teacher_labels_per_epoch",
           versus="adapt_only_per_epoch"),
    # the other stages, before and with the changes that helped prune_during (what the defaults need):
    # prune_before adapts an already pruned network, so only re-clustering applies to it; prune_after's
    # teacher is the adapted model it starts from
    _unsup("prune_before", "prune_before", "rounds", versus="adapt_only"),
    _unsup("prune_before_per_epoch", "prune_before", "per_epoch", versus="prune_before"),
    _unsup("prune_after", "prune_after", "rounds", versus="adapt_only"),
    _unsup("prune_after_teacher_labels_per_epoch", "prune_after", "teacher_labels_per_epoch", versus="prune_after"),
]
# The recipe the defaults now run against the first one, for the best stage; and where to prune
# under it: each stage against the others (the grid's question, unsupervised).
EXTRA_PAIRS = [("prune_during_teacher_labels_per_epoch", "prune_during"),
               ("prune_during_teacher_labels_per_epoch", "prune_before_per_epoch"),
               ("prune_during_teacher_labels_per_epoch", "prune_after_teacher_labels_per_epoch"),
               ("prune_before_per_epoch", "prune_after_teacher_labels_per_epoch")]
GAP_ENDS = ("source_only", "adapt_only_supervised")


def comparisons(rows: list[dict]) -> list[dict]:
    """Each run with a `versus` against that run, and the `EXTRA_PAIRS`, paired over the seeds both
    have; rank-1 and mAP, test and val."""
    pairs = [(run.label, run.versus) for run in PLAN if run.versus] + EXTRA_PAIRS
    return compare_pairs(rows, [("unsupervised", a, b, "ablation") for a, b in pairs])


def gap_closed(rows: list[dict]) -> dict[str, dict]:
    """Per unsupervised adapt_only label: the share of the direct-transfer -> supervised gap in
    target test rank-1 it closes, per seed, with the mean and the seeds' spread (points)."""
    by = {(r["label"], r["seed"]): r for r in rows}
    shares: dict[str, dict] = {}
    for run in PLAN:
        if run.scenario != "adapt_only" or run.adaptation != "unsupervised":
            continue
        per_seed = {}
        for (label, seed), row in by.items():
            ends = [by.get((end, seed)) for end in GAP_ENDS]
            if label == run.label and all(ends):
                direct, supervised = (end["rank1"] for end in ends)
                per_seed[seed] = (row["rank1"] - direct) / max(supervised - direct, 1e-9)
        if per_seed:
            rank1 = [by[(run.label, s)]["rank1"] for s in per_seed]
            shares[run.label] = {"per_seed": per_seed, "mean": statistics.mean(per_seed.values()),
                                 "rank1_spread_points": 100 * (max(rank1) - min(rank1))}
    return shares


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reduction", type=float, default=0.5, help="share of FLOPs the pruned models remove")
    parser.add_argument("--only", default="", help="comma-separated labels of PLAN to run (default: all)")
    parser.add_argument("--finished-only", action="store_true", help="collect finished runs, train nothing")
    parser.add_argument("--json", type=Path, help="rows here (after every seed), comparisons beside it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wanted = {label for label in args.only.split(",") if label}
    if unknown := wanted - {run.label for run in PLAN}:
        parser.error(f"--only: unknown labels {sorted(unknown)}; choose from {[r.label for r in PLAN]}")
    plan = [run for run in PLAN if not wanted or run.label in wanted]
    rows = run_seeds(args, plan, VARIANTS)
    records = comparisons(rows)
    shares = gap_closed(rows)
    if args.json:
        comparisons_path(args.json).write_text(json.dumps({"comparisons": records, "gap_closed": shares},
                                                          indent=2) + "\n")
    print(f"{'label':>28} {'seed':>4} {'rank1':>6} {'val_r1':>6} {'mAP':>6}")
    for r in rows:
        print(f"{r['label']:>28} {r['seed']:>4} {100 * r['rank1']:>6.1f} {100 * r.get('val_rank1', float('nan')):>6.1f} "
              f"{100 * r['mAP']:>6.1f}")
    for label, share in shares.items():
        print(f"{label}: closes {100 * share['mean']:.0f}% of the direct -> supervised gap "
              f"(per seed {', '.join(f'{100 * v:.0f}%' for v in share['per_seed'].values())}; "
              f"rank-1 spread {share['rank1_spread_points']:.1f} points)")
    for record in records:
        if record["metric"] == "rank1":
            pruned = record["comparison"].startswith("prune")  # adapt_only ablations remove no FLOPs
            print(f"[{record['split']}] "
                  f"{format_comparison({**record, 'split': None, 'flops_reduction': args.reduction if pruned else 0})}")


if __name__ == "__main__":
    main()
