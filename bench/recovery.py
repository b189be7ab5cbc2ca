"""Do pruned models keep rank-1 on the new cameras, and what does each part of the recovery buy?

    python -m bench.recovery --profile full --seeds 0,1,2 --json docs/bench/recovery_full.json

For each seed (its own source model, shared with `bench.scenarios` and `reid-prune run`) this
runs `PLAN`, most important first, so an interrupted run still answers the main question:
- the references: adapt_only, adapt_short (the epochs prune_before/after adapt), small_dense;
- prune_during with the default recovery (params.yaml `prune`: the legacy schedule, no teacher)
  and with the gradual recipe of issue 13 (ramp, removal at half the step, recovery in the final
  shape with a mean teacher, BatchNorm recalibration), and ablations of each part (`VARIANTS`);
- prune_after with and without its teacher (the adapted model it starts from);
- the budget sweep: adapt_only, prune_during and small_dense at 12 (and 24) epochs: is the gap
  to the unpruned model budget or capacity?
`--only` picks labels, `--finished-only` collects finished runs without training any.
Default-recipe runs write where `bench.scenarios` does (either reuses the other's results);
variants under outputs/.../ablations/<variant>/.

Every row has target test and target validation metrics. Comparisons are paired within seeds
(`reid_models.stats`: mean over seeds of the per-seed difference, 95% interval over seeds and query
identities, Holm-adjusted within each table: `resolved_holm`), on both splits: settings are
chosen on `val`, figures reported on `test`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import torch

from bench.scenarios import comparisons_path, settings_for_seed
from bench.settings_cli import settings_parser
from reid_models import stages
from reid_models.scenarios import VAL_PER_QUERY_FILE, Scenario, fingerprint, pretrain_small_dense, run_scenario
from reid_models.stats import PER_QUERY_FILE, format_comparison, load_per_query, paired_difference, with_holm

# Variants: -S overrides on top of params.yaml, explicit about the recovery they run, so a change
# of default does not change what a variant means. The default (params.yaml `prune`) is the legacy
# schedule without a teacher, chosen on the validation split from these runs (RESULTS s.6).
GRADUAL = ["prune.schedule=gradual", "prune.distill=true", "prune.bn_recalibration_batches=40"]
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "gradual": GRADUAL,  # ramp, removal at half the step, recovery with the mean teacher, BN recalibration
    "gradual_no_distill": [*GRADUAL, "prune.distill=false"],
    "gradual_no_bn_recal": [*GRADUAL, "prune.bn_recalibration_batches=0"],
    "gradual_remove_early": [*GRADUAL, "prune.remove_at=0.34"],  # 6 epochs: ramp 2, removal, 4 in the final shape
    "gradual_teacher_start": [*GRADUAL, "prune.during_teacher=start"],
    "legacy_distill": ["prune.schedule=legacy", "prune.distill=true", "prune.bn_recalibration_batches=40"],
    "scope_internal": ["prune.scope=internal"],
    "epochs12": ["scenarios.epochs=12"],
    "gradual_epochs12": [*GRADUAL, "scenarios.epochs=12"],
    "epochs24": ["scenarios.epochs=24"],
}
REFERENCES = ("adapt_only", "adapt_short", "small_dense")


class Run(NamedTuple):
    label: str  # unique within an adaptation mode
    scenario: str
    adaptation: str
    variant: str = "default"
    budget: str = "default"  # whose references (adapt_only, small_dense ...) it is compared with
    versus: str | None = None  # the run it is an ablation of


def _sup(label: str, variant: str, versus: str | None = None, budget: str = "default",
         scenario: str = "prune_during") -> Run:
    return Run(label, scenario, "supervised", variant, budget, versus)


# Most important first: an interrupted run still answers the main question.
PLAN: list[Run] = [
    Run("adapt_only", "adapt_only", "supervised"),
    Run("prune_during", "prune_during", "supervised"),
    Run("small_dense", "small_dense", "supervised"),
    _sup("gradual_during", "gradual", versus="prune_during"),
    _sup("gradual_no_distill_during", "gradual_no_distill", versus="gradual_during"),
    _sup("legacy_distill_during", "legacy_distill", versus="prune_during"),
    _sup("gradual_remove_early_during", "gradual_remove_early", versus="gradual_during"),
    _sup("adapt_only@12", "epochs12", budget="epochs12", scenario="adapt_only"),
    _sup("gradual_during@12", "gradual_epochs12", budget="epochs12", versus="prune_during@12"),
    _sup("prune_during@12", "epochs12", budget="epochs12"),
    _sup("small_dense@12", "epochs12", budget="epochs12", scenario="small_dense"),
    Run("adapt_short", "adapt_short", "supervised"),
    Run("prune_after", "prune_after", "supervised"),
    # prune_after is the one scenario with a teacher stronger than its student's start: the model
    # adapted to the target before pruning (prune_during's mean teacher is its own recent self)
    _sup("legacy_distill_after", "legacy_distill", versus="prune_after", scenario="prune_after"),
    _sup("gradual_after", "gradual", versus="prune_after", scenario="prune_after"),
    Run("prune_before", "prune_before", "supervised"),
    _sup("gradual_no_bn_recal_during", "gradual_no_bn_recal", versus="gradual_during"),
    _sup("gradual_teacher_start_during", "gradual_teacher_start", versus="gradual_during"),
    _sup("scope_internal_during", "scope_internal", versus="prune_during"),
    Run("adapt_only", "adapt_only", "unsupervised"),
    Run("prune_during", "prune_during", "unsupervised"),
    Run("prune_before", "prune_before", "unsupervised"),
    _sup("adapt_only@24", "epochs24", budget="epochs24", scenario="adapt_only"),
    _sup("prune_during@24", "epochs24", budget="epochs24"),
    _sup("small_dense@24", "epochs24", budget="epochs24", scenario="small_dense"),
]


def run_plan(params: str, profile: str, overrides: list[str], seed: int, plan: list[Run],
             reduction: float, finished_only: bool = False, variants: dict[str, list[str]] = VARIANTS) -> list[dict]:
    """Each run of `plan` for one seed, from the seed's source model; a variant's overrides come from
    `variants` (bench.unsupervised passes its own)."""
    base = settings_for_seed(params, profile, overrides, seed)
    torch.set_num_threads(base.orchestration.torch_threads)
    for domain in ("source", "target"):
        stages.prepare_domain(domain, getattr(base.data, domain), base.data)
    outputs = Path(base.outputs)
    source = stages.pretrain(base, outputs / "pretrain")["checkpoint"]
    rows = []
    for run in plan:
        settings = settings_for_seed(params, profile, [*overrides, *variants[run.variant]], seed)
        unpruned = run.scenario in ("adapt_only", "adapt_short", "source_only")
        scenario = Scenario(run.scenario, "none" if run.scenario in REFERENCES or unpruned else settings.prune.criterion,
                            0.0 if unpruned else reduction, run.adaptation, seed)
        # The default variant writes where bench.scenarios / reid-prune run do; the others apart.
        out_dir = outputs / "scenarios" / scenario.key if run.variant == "default" else \
            outputs / "ablations" / run.variant / scenario.key
        if finished_only and not _finished(scenario, settings, out_dir, source, reduction):
            continue
        small_dense = pretrain_small_dense(settings, reduction, outputs / "scenarios" / f"small_dense_source_{reduction:g}") \
            if run.scenario == "small_dense" else None
        row = run_scenario(scenario, settings, source, out_dir, small_dense, progress=False)
        row = {**row, "label": run.label, "variant": run.variant, "budget": run.budget, "versus": run.versus}
        logging.info("seed %d %s (%s): test rank1 %.3f, val rank1 %.3f, GFLOPs %.3f, train GFLOPs %.0f (%.0f s)",
                     seed, run.label, run.adaptation, row["rank1"], row.get("val_rank1", float("nan")),
                     row["flops"] / 1e9, row["train_gflops"], row["seconds"])
        rows.append(row)
    return rows


def _finished(scenario: Scenario, settings, out_dir: Path, source: str, reduction: float) -> bool:
    """A saved result of these very settings (a stale one is reported, never deleted, here)."""
    start = Path(source) if scenario.name != "small_dense" else \
        Path(settings.outputs) / "scenarios" / f"small_dense_source_{reduction:g}" / "model.pt"
    marker = out_dir / "fingerprint.txt"
    if not (out_dir / "result.json").is_file() or not start.is_file():
        return False
    if marker.read_text() != fingerprint(scenario, settings, start):
        logging.warning("%s: saved under other settings; left out", out_dir)
        return False
    return True


def _per_query(row: dict, split: str) -> dict | None:
    path = Path(row["result_dir"]) / (PER_QUERY_FILE if split == "test" else VAL_PER_QUERY_FILE)
    return load_per_query(path) if path.is_file() else None


def comparisons(rows: list[dict]) -> list[dict]:
    """Paired over the seeds both ran: each pruned row vs adapt_only / adapt_short / small_dense of
    its adaptation and budget, and each ablation vs the run it ablates; rank-1 and mAP, test and val."""
    pairs = []
    for mode in sorted({r["adaptation"] for r in rows}):
        pruned = {(r["label"], r["name"], r["budget"], r["versus"]) for r in rows
                  if r["adaptation"] == mode and r["name"] not in REFERENCES}
        for label, name, budget, versus in sorted(pruned, key=str):
            suffix = "" if budget == "default" else "@" + budget.removeprefix("epochs")
            for reference in REFERENCES:
                pairs.append((mode, label, reference + suffix, f"vs_{reference}"))
            if versus:
                pairs.append((mode, label, versus, "ablation"))
            if name != "prune_during":  # another stage's best recipe against the best stage's default
                pairs.append((mode, label, "prune_during" + suffix, "vs_prune_during"))
    return compare_pairs(rows, pairs)


def compare_pairs(rows: list[dict], pairs: list[tuple[str, str, str, str]]) -> list[dict]:
    """Each (adaptation, label A, label B, kind) of `pairs`, A - B paired over the seeds both ran;
    rank-1 and mAP on the target test and validation splits (pairs missing per-query files skipped).
    Each distinct pair counts once; Holm families: adaptation x kind x split x metric."""
    by = {(r["label"], r["adaptation"], r["seed"]): r for r in rows}
    records = []
    for mode, a, b, kind in dict.fromkeys(pairs):  # each pair once, in order
        seeds = sorted(s for (label, m, s) in by if label == a and m == mode and (b, mode, s) in by)
        for split in ("test", "val"):
            first = [_per_query(by[(a, mode, s)], split) for s in seeds]
            second = [_per_query(by[(b, mode, s)], split) for s in seeds]
            if not seeds or any(x is None for x in first + second):
                continue
            for metric in ("rank1", "mAP"):
                result = paired_difference(first, second, metric, a=a, b=b, seeds=seeds)
                records.append({"comparison": f"{a} vs {b}", "kind": kind, "adaptation": mode, "split": split,
                                **result.as_dict()})
    return with_holm(records, ("adaptation", "kind", "split", "metric"))


def print_comparisons(records: list[dict], flops_reduction: float) -> None:
    """The rank-1 rows of `compare_pairs`' records, one line each, split first."""
    for record in records:
        if record["metric"] == "rank1":
            shown = {**record, "split": None, "flops_reduction": flops_reduction}
            print(f"[{record['split']}] {format_comparison(shown)}")


def run_seeds(args, plan: list[Run], variants: dict[str, list[str]] = VARIANTS) -> list[dict]:
    """`plan` for each of `args.seeds` (every variant's settings checked first, before any training);
    the rows so far written to `args.json` after each seed."""
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:  # fail fast on bad settings, before any training
        for variant in {run.variant for run in plan}:
            settings_for_seed(args.params, args.profile, [*args.overrides, *variants[variant]], seed)
    rows: list[dict] = []
    for seed in seeds:
        rows += run_plan(args.params, args.profile, args.overrides, seed, plan, args.reduction, args.finished_only,
                         variants)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reduction", type=float, default=0.5, help="share of FLOPs the pruned models remove")
    parser.add_argument("--only", default="", help="comma-separated labels of PLAN to run (default: all)")
    parser.add_argument("--finished-only", action="store_true", help="collect finished runs, train nothing")
    parser.add_argument("--adaptation", choices=["supervised", "unsupervised"], help="only this mode's runs")
    parser.add_argument("--json", type=Path, help="rows here (after every seed), comparisons beside it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wanted = {label for label in args.only.split(",") if label}
    unknown = wanted - {run.label for run in PLAN}
    if unknown:
        parser.error(f"--only: unknown labels {sorted(unknown)}; choose from {sorted({r.label for r in PLAN})}")
    plan = [run for run in PLAN if (not wanted or run.label in wanted)
            and (args.adaptation is None or run.adaptation == args.adaptation)]
    rows = run_seeds(args, plan)
    records = comparisons(rows)
    if args.json:
        comparisons_path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    print(f"{'label':>24} {'adaptation':>12} {'seed':>4} {'GFLOPs':>7} {'trainGF':>8} {'rank1':>6} {'val_r1':>6} "
          f"{'mAP':>6}")
    for r in rows:
        print(f"{r['label']:>24} {r['adaptation']:>12} {r['seed']:>4} {r['flops'] / 1e9:>7.3f} "
              f"{r['train_gflops']:>8.0f} {100 * r['rank1']:>6.1f} {100 * r.get('val_rank1', float('nan')):>6.1f} "
              f"{100 * r['mAP']:>6.1f}")
    print_comparisons(records, args.reduction)


if __name__ == "__main__":
    main()
