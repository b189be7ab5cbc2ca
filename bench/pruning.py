"""Which criterion keeps ReID accuracy at a given FLOPs budget, and is the pruned model faster?

    python -m bench.pruning --profile full --json docs/bench/pruning_full.json   # seeds 0,1,2
    python -m bench.pruning --target --json docs/bench/pruning_target_full.json   # on the new cameras

Every row starts from the same source-trained model (`outputs/pretrain/model.pt`, trained once
and reused) and gets the same fine-tuning budget (`prune.finetune`) and seed; only the
criterion and the FLOPs reduction change. Rank-1 and mAP are on the source test split (the
domain the pruned model is fine-tuned on); latency (batch 1) and throughput (batch 32) are
measured on this machine's CPU (BatchNorm folded, channels_last), each pruned model back to back
with the unpruned one, as ratios. `--retime` measures the ratios of a finished run again
(speed only) when something else ran on the machine during a training run.

Each seed (`--seeds`, default 0,1,2) pretrains its own source model (the default seed's is
`reid-prune run`'s, another's is under outputs/seeds/seedN) and prunes it with every criterion.
Each criterion is compared with PLFP paired within seeds (`reid_models.stats`: mean over seeds of
the per-seed difference, 95% interval over seeds and query identities, Holm-adjusted within each
table: `resolved_holm`), on both test splits: printed, and written beside `--json X.json` (the
rows, a list) as `X_comparisons.json`.

`--target` asks the question where it matters, on the new cameras: each criterion prunes as the
scenario `--stage` (default prune_during, supervised; the grid's best stage) from each seed's
source model, under each allocation of `ALLOCATIONS` (each criterion's own global ranking, one
shared l1 ranking, uniform), so with a shared allocation the criterion decides only which filters
go. Rows have target test and validation rank-1/mAP and the batch-32 throughput ratio; each
criterion is compared with PLFP per allocation and reduction, paired over seeds, on both splits.
`--target --merge A.json B.json --json X.json` joins runs split over processes (e.g. by seed)
into one, comparisons included, without training or timing anything again.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import torch

from bench.scenarios import comparisons_path, seed_overrides, settings_for_seed
from bench.settings_cli import settings_parser
from reid_models import stages
from reid_models.complexity import measure
from reid_models.config import load_settings
from reid_models.models import resolve_device
from reid_models.pruning.criteria import CRITERIA
from reid_models.scenarios import VAL_PER_QUERY_FILE, Scenario, run_scenario
from reid_models.stats import (PER_QUERY_FILE, REFERENCE_CRITERION, format_comparison, load_per_query,
                               paired_difference, with_holm)

REDUCTIONS = (0.5, 0.3, 0.7)  # 0.5 first: the headline budget


def run_name(criterion: str, reduction: float, mode: str) -> str:
    return f"{criterion}_{reduction}_{mode}"


def speed_ratios(settings, pruned_checkpoint: str, base_checkpoint: str, rounds: int = 3) -> dict:
    """Latency and throughput of pruned vs unpruned, measured alternately (base, pruned, base, ...)
    for `rounds` rounds; the median of the per-round ratios resists drift and stray load."""
    height, width = settings.data.height, settings.data.width
    models = {"base": stages.load_model(base_checkpoint), "pruned": stages.load_model(pruned_checkpoint)}
    latency, throughput, pruned_cost = [], [], {}
    for _ in range(rounds):
        costs = {name: measure(model, height, width, repeats=40) for name, model in models.items()}
        latency.append(costs["base"]["latency_ms"] / costs["pruned"]["latency_ms"])
        throughput.append(costs["pruned"]["throughput_ips"] / costs["base"]["throughput_ips"])
        pruned_cost = costs["pruned"]
    return {"latency_ms": pruned_cost["latency_ms"], "throughput_ips": pruned_cost["throughput_ips"],
            "latency_ratio": statistics.median(latency), "throughput_ratio": statistics.median(throughput)}


def evaluate_row(settings, checkpoint: str, source, target) -> tuple[dict, dict]:
    """The row's FLOPs, params and metrics, and the per-query results of both test splits."""
    model = stages.load_model(checkpoint)
    device = resolve_device(settings.device)
    cost = measure(model, settings.data.height, settings.data.width, timing=False)
    on_source = stages.evaluate_model(model, source, settings.data, settings.evaluate, device)
    on_target = stages.evaluate_model(model, target, settings.data, settings.evaluate, device)
    row = {"flops": cost["flops"], "params": cost["params"], "rank1": on_source["rank1"], "mAP": on_source["mAP"],
           "target_rank1": on_target["rank1"], "target_mAP": on_target["mAP"]}
    return row, {"source": on_source["per_query"], "target": on_target["per_query"]}


def criterion_comparisons(rows: list[dict], per_query: dict) -> list[dict]:
    """Each criterion vs PLFP at each FLOPs reduction, paired over the seeds both ran (each seed
    prunes its own source model), on the source and target test splits, rank-1 and mAP."""
    records = []
    for reduction in sorted({r["target_reduction"] for r in rows if r["criterion"] != "none"}):
        at = [r for r in rows if r["target_reduction"] == reduction]
        for criterion in sorted({r["criterion"] for r in at} - {"none", REFERENCE_CRITERION}):
            seeds = sorted(r["seed"] for r in at if r["criterion"] == criterion
                           and (r["seed"], REFERENCE_CRITERION, reduction) in per_query)
            if not seeds:
                continue
            for split in ("source", "target"):
                for metric in ("rank1", "mAP"):
                    result = paired_difference(
                        [per_query[(s, criterion, reduction)][split] for s in seeds],
                        [per_query[(s, REFERENCE_CRITERION, reduction)][split] for s in seeds],
                        metric, a=criterion, b=REFERENCE_CRITERION, seeds=seeds)
                    records.append({"comparison": f"{criterion} vs {REFERENCE_CRITERION}", "split": split,
                                    "flops_reduction": reduction, "mode": at[0]["mode"], **result.as_dict()})
    return with_holm(records, ("flops_reduction", "split", "metric"))


def _write_json(path: Path | None, records: list[dict]) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=2) + "\n")


def run(profile: str, params: str, overrides: list[str], criteria: list[str], reductions: list[float],
        seeds: list[int], json_path: Path | None) -> tuple[list[dict], list[dict]]:
    """The rows of every seed (its own source model: the default seed's is `reid-prune run`'s, another
    seed's under outputs/seeds/seedN) and the criterion-vs-PLFP comparisons paired over seeds."""
    base_settings = load_settings(params, profile, overrides)
    for domain in ("source", "target"):
        stages.prepare_domain(domain, getattr(base_settings.data, domain), base_settings.data)
    source = stages.load_domain(base_settings.data.source, base_settings.data, check_images=False)
    target = stages.load_domain(base_settings.data.target, base_settings.data, check_images=False)
    rows: list[dict] = []
    per_query: dict[tuple[int, str, float], dict] = {}  # (seed, criterion, reduction) -> split -> arrays
    for seed in seeds:
        seed_set = [*overrides, *seed_overrides(base_settings, seed)]
        settings = load_settings(params, profile, seed_set)
        pretrained = stages.pretrain(settings, Path(settings.outputs) / "pretrain")["checkpoint"]  # resumes if done
        base, per_query[(seed, "none", 0.0)] = evaluate_row(settings, pretrained, source, target)
        rows.append({"criterion": "none", "mode": "none", "seed": seed, "target_reduction": 0.0,
                     "measured_reduction": 0.0, **base, **speed_ratios(settings, pretrained, pretrained), "seconds": 0.0})
        out_root = Path(settings.outputs) / "bench" / "pruning"
        for reduction in reductions:
            for criterion in criteria:
                began = time.perf_counter()
                run_settings = load_settings(params, profile, [*seed_set, f"prune.criterion={criterion}",
                                                               f"prune.flops_reduction={reduction}"])
                result = stages.prune(run_settings, pretrained,
                                      out_root / run_name(criterion, reduction, run_settings.prune.mode))
                row, per_query[(seed, criterion, reduction)] = evaluate_row(settings, result["checkpoint"], source,
                                                                            target)
                rows.append({"criterion": criterion, "mode": run_settings.prune.mode, "seed": seed,
                             "target_reduction": reduction, "measured_reduction": 1 - row["flops"] / base["flops"],
                             **row, **speed_ratios(settings, result["checkpoint"], pretrained),
                             "seconds": time.perf_counter() - began})
                logging.info("seed %d, %s @ %.1f: rank1 %.3f mAP %.3f, %.2fx throughput", seed, criterion, reduction,
                             row["rank1"], row["mAP"], rows[-1]["throughput_ratio"])
                _write_json(json_path, rows)  # after every row: a long run that stops keeps what it measured
    comparisons = criterion_comparisons(rows, per_query)
    _write_json(json_path and comparisons_path(json_path), comparisons)
    return rows, comparisons


# --- criteria on the target, in a pruning stage of the scenario grid ---------------------------

# How many channels each group loses: each criterion's own global ranking (as in the grid), one
# shared ranking (l1's) or the same share everywhere; with a shared allocation the criterion
# decides only which filters go.
ALLOCATIONS: dict[str, list[str]] = {
    "own": [],
    "shared_l1": ["prune.allocation=global", "prune.allocation_criterion=l1"],
    "uniform": ["prune.allocation=uniform"],
}


def run_allocation(allocation: str, criterion: str) -> str:
    """The allocation whose run this is: a criterion under the ranking it would use anyway (l1 under
    shared_l1) is the same run as under its own, so it is run and counted once, as "own"."""
    return "own" if allocation == f"shared_{criterion}" else allocation


def run_on_target(profile: str, params: str, overrides: list[str], criteria: list[str], reductions: list[float],
                  seeds: list[int], allocations: list[str], stage: str, adaptation: str,
                  json_path: Path | None) -> tuple[list[dict], list[dict]]:
    """Every criterion x reduction x allocation as the scenario `stage` (default prune_during,
    supervised) from each seed's source model: target test and validation metrics, FLOPs, and the
    batch-32 throughput ratio against the unpruned model, measured alternately."""
    rows: list[dict] = []
    per_query: dict[tuple, dict] = {}  # (seed, allocation, criterion, reduction) -> split -> arrays
    for seed in seeds:
        base = settings_for_seed(params, profile, overrides, seed)
        torch.set_num_threads(base.orchestration.torch_threads)
        for domain in ("source", "target"):
            stages.prepare_domain(domain, getattr(base.data, domain), base.data)
        pretrained = stages.pretrain(base, Path(base.outputs) / "pretrain")["checkpoint"]
        for reduction in reductions:
            for listed in allocations:
                for criterion in criteria:
                    allocation = run_allocation(listed, criterion)
                    if (seed, allocation, criterion, reduction) in per_query:
                        continue  # the same run as the criterion's own allocation, already done
                    settings = settings_for_seed(params, profile, [*overrides, *ALLOCATIONS[allocation]], seed)
                    scenario = Scenario(stage, criterion, reduction, adaptation, seed)
                    out_dir = Path(base.outputs) / "scenarios" / scenario.key if allocation == "own" else \
                        Path(base.outputs) / "bench" / "pruning_target" / allocation / scenario.key
                    row = run_scenario(scenario, settings, pretrained, out_dir, progress=False)
                    row = {**row, "allocation": allocation,
                           **speed_ratios(settings, str(out_dir / "model.pt"), pretrained)}
                    per_query[(seed, allocation, criterion, reduction)] = {
                        "test": load_per_query(out_dir / PER_QUERY_FILE),
                        "val": load_per_query(out_dir / VAL_PER_QUERY_FILE)}
                    rows.append(row)
                    logging.info("seed %d %s %s @ %.1f: target rank1 %.3f (val %.3f), %.2fx throughput", seed,
                                 allocation, criterion, reduction, row["rank1"], row["val_rank1"],
                                 row["throughput_ratio"])
                    _write_json(json_path, rows)
    records = target_comparisons(per_query, seeds, adaptation)
    _write_json(json_path and comparisons_path(json_path), records)
    return rows, records


def target_comparisons(per_query: dict[tuple, dict], seeds: list[int], adaptation: str) -> list[dict]:
    """Each criterion vs PLFP under each allocation and reduction (the criterion's effect), and each
    criterion under one allocation vs another (the allocation's effect: what the criterion's own
    global ranking buys over uniform or a shared ranking); paired over the seeds both have, rank-1
    and mAP on the target test and validation splits. `per_query`: (seed, allocation, criterion,
    reduction) -> {"test": ..., "val": ...} per-query results."""
    def run(key: tuple) -> tuple:  # the run a (allocation, criterion, reduction) setting is
        return run_allocation(key[0], key[1]), *key[1:]

    allocations = {a for (_, a, _, _) in per_query}
    per_query = {(s, *run((a, c, r))): arrays for (s, a, c, r), arrays in per_query.items()}
    present = {(a, c, r) for (_, a, c, r) in per_query}
    keys = {(a, c, r) for a in allocations for (_, c, r) in present if run((a, c, r)) in present}
    pairs = [(f"{criterion} vs {REFERENCE_CRITERION} ({allocation} allocation)", (allocation, criterion, reduction),
              (allocation, REFERENCE_CRITERION, reduction), criterion, REFERENCE_CRITERION, allocation)
             for allocation, criterion, reduction in sorted(keys) if criterion != REFERENCE_CRITERION]
    order = list(ALLOCATIONS)
    pairs += [(f"{criterion}: {a} vs {b} allocation", (a, criterion, reduction), (b, criterion, reduction),
               a, b, f"{a} vs {b}")
              for a, criterion, reduction in sorted(keys) for b in order[order.index(a) + 1:]]
    records, compared = [], set()
    for name, first, second, a, b, allocation in pairs:
        first, second = run(first), run(second)
        if first not in present or second not in present or first == second or (first, second) in compared:
            continue  # each distinct pair of runs once (l1 under shared_l1 is l1 under its own)
        compared.add((first, second))
        both = [s for s in seeds if (s, *first) in per_query and (s, *second) in per_query]
        if not both:
            continue
        for split in ("test", "val"):
            for metric in ("rank1", "mAP"):
                result = paired_difference([per_query[(s, *first)][split] for s in both],
                                           [per_query[(s, *second)][split] for s in both], metric, a=a, b=b,
                                           seeds=both)
                records.append({"comparison": name, "split": split, "flops_reduction": first[2],
                                "allocation": allocation, "adaptation": adaptation,
                                "kind": "allocations" if " vs " in allocation else "criteria", **result.as_dict()})
    return with_holm(records, ("kind", "split", "metric"))


def merge_target_runs(parts: list[Path], json_path: Path | None) -> tuple[list[dict], list[dict]]:
    """The rows of `--target` runs written to several files (e.g. seeds split over two processes)
    as one run: rows concatenated, comparisons computed from each row's saved per-query results.
    Nothing is trained or timed again."""
    rows = [row for part in parts for row in json.loads(part.read_text())]
    per_query = {(r["seed"], r["allocation"], r["criterion"], r["flops_reduction"]): {
        "test": load_per_query(Path(r["result_dir"]) / PER_QUERY_FILE),
        "val": load_per_query(Path(r["result_dir"]) / VAL_PER_QUERY_FILE)} for r in rows}
    if len(per_query) < len(rows):
        raise SystemExit(f"--merge: {len(rows) - len(per_query)} rows of {', '.join(map(str, parts))} are "
                         "duplicates (same seed, allocation, criterion and reduction); merge each run once")
    adaptations = {r["adaptation"] for r in rows}
    records = target_comparisons(per_query, sorted({r["seed"] for r in rows}), "/".join(sorted(adaptations)))
    _write_json(json_path, rows)
    _write_json(json_path and comparisons_path(json_path), records)
    return rows, records


def retime(profile: str, params: str, overrides: list[str], json_path: Path) -> list[dict]:
    """Measure the speed ratios of an existing run's rows again, on an otherwise idle machine
    (training runs are long; a stray process during one row's timing should not cost a rerun)."""
    base_settings = load_settings(params, profile, overrides)
    rows = json.loads(json_path.read_text())
    for row in rows:
        settings = load_settings(params, profile,
                                 [*overrides, *seed_overrides(base_settings, row.get("seed", base_settings.seed))])
        pretrained = str(Path(settings.outputs) / "pretrain" / "model.pt")
        out_root = Path(settings.outputs) / "bench" / "pruning"
        checkpoint = pretrained if row["criterion"] == "none" else \
            str(out_root / run_name(row["criterion"], row["target_reduction"], row["mode"]) / "model.pt")
        row.update(speed_ratios(settings, checkpoint, pretrained))
        logging.info("%s @ %.1f: %.2fx throughput", row["criterion"], row["target_reduction"], row["throughput_ratio"])
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def markdown(rows: list[dict]) -> str:
    """The docs/RESULTS.md table of a finished run: one row per budget, one column pair per criterion."""
    lines = [("| criterion | mode | seed | FLOPs - (target) | measured | rank-1 | mAP | target rank-1 | latency x | "
              "throughput x |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["target_reduction"], r["criterion"] != "plfp", r["criterion"],
                                         r.get("seed", 0))):
        lines.append(f"| {r['criterion']} | {r.get('mode', '')} | {r.get('seed', '')} | {r['target_reduction']:.1f} | "
                     f"{r['measured_reduction']:.3f} | {100 * r['rank1']:.1f} | {100 * r['mAP']:.1f} | "
                     f"{100 * r['target_rank1']:.1f} | {r['latency_ratio']:.2f} | {r['throughput_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--reductions", default=",".join(map(str, REDUCTIONS)))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; each pretrains its own source model")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--retime", action="store_true", help="only re-measure the speed ratios of --json's rows")
    parser.add_argument("--table", action="store_true", help="only print --json's rows as a markdown table")
    parser.add_argument("--target", action="store_true",
                        help="criteria on the target, as the pruning stage --stage of the scenario grid")
    parser.add_argument("--stage", default="prune_during", choices=["prune_before", "prune_during", "prune_after"])
    parser.add_argument("--adaptation", default="supervised", choices=["supervised", "unsupervised"])
    parser.add_argument("--allocations", default=",".join(ALLOCATIONS), help=f"of {', '.join(ALLOCATIONS)}")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="ROWS_JSON",
                        help="with --target: merge these finished runs' row files into --json (no training)")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.json.read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.target:
        allocations = args.allocations.split(",")
        if unknown := set(allocations) - set(ALLOCATIONS):
            parser.error(f"--allocations: unknown {sorted(unknown)}; choose from {', '.join(ALLOCATIONS)}")
        if args.merge:
            rows, comparisons = merge_target_runs(args.merge, args.json)
        else:
            rows, comparisons = run_on_target(args.profile, args.params, args.overrides, args.criteria.split(","),
                                              [float(r) for r in args.reductions.split(",")],
                                              [int(s) for s in args.seeds.split(",")], allocations, args.stage,
                                              args.adaptation, args.json)
        for r in rows:
            print(f"{r['allocation']:>9} {r['criterion']:>7} seed {r['seed']} -{r['flops_reduction']:g}: target rank-1 "
                  f"{100 * r['rank1']:.1f} (val {100 * r['val_rank1']:.1f}), GFLOPs {r['flops'] / 1e9:.3f}, "
                  f"throughput x{r['throughput_ratio']:.2f}")
        for comparison in comparisons:
            if comparison["metric"] == "rank1":
                print(f"[{comparison['split']}] {format_comparison({**comparison, 'split': None})}")
        return
    comparisons: list[dict] = []
    if args.retime:
        rows = retime(args.profile, args.params, args.overrides, args.json)
    else:
        rows, comparisons = run(args.profile, args.params, args.overrides, args.criteria.split(","),
                                [float(r) for r in args.reductions.split(",")],
                                [int(s) for s in args.seeds.split(",")], args.json)
    header = (f"{'criterion':>9} {'seed':>4} {'target':>6} {'measured':>8} {'rank1':>6} {'mAP':>6} {'tgt r1':>6} "
              f"{'lat x':>6} {'thr x':>6}")
    print(header)
    for r in rows:
        print(f"{r['criterion']:>9} {r.get('seed', ''):>4} {r['target_reduction']:>6.2f} {r['measured_reduction']:>8.3f} "
              f"{r['rank1']:>6.3f} {r['mAP']:>6.3f} {r['target_rank1']:>6.3f} {r['latency_ratio']:>6.2f} "
              f"{r['throughput_ratio']:>6.2f}")
    if comparisons:
        print("each criterion vs PLFP, paired over seeds (points, 95% interval over seeds and query identities):")
    for comparison in comparisons:
        print(format_comparison(comparison))


if __name__ == "__main__":
    main()
