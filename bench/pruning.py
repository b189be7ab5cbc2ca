"""Which criterion keeps ReID accuracy at a given FLOPs budget, and is the pruned model faster?

    python -m bench.pruning --profile default --json docs/bench/pruning_default.json

Every row starts from the same source-trained model (`outputs/pretrain/model.pt`, trained once
and reused) and gets the same fine-tuning budget (`prune.finetune`) and seed; only the
criterion and the FLOPs reduction change. Rank-1 and mAP are on the source test split (the
domain the pruned model is fine-tuned on); latency (batch 1) and throughput (batch 32) are
measured on this machine's CPU (BatchNorm folded, channels_last), each pruned model back to back
with the unpruned one, as ratios. `--retime` measures the ratios of a finished run again
(speed only) when something else ran on the machine during a training run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from reid_models import stages
from reid_models.complexity import measure
from reid_models.config import load_settings
from reid_models.models import resolve_device
from reid_models.pruning.criteria import CRITERIA

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


def evaluate_row(settings, checkpoint: str, source, target) -> dict:
    model = stages.load_model(checkpoint)
    device = resolve_device(settings.device)
    cost = measure(model, settings.data.height, settings.data.width, timing=False)
    on_source = stages.evaluate_model(model, source, settings.data, settings.evaluate, device)
    on_target = stages.evaluate_model(model, target, settings.data, settings.evaluate, device)
    return {"flops": cost["flops"], "params": cost["params"], "rank1": on_source["rank1"], "mAP": on_source["mAP"],
            "target_rank1": on_target["rank1"], "target_mAP": on_target["mAP"]}


def run(profile: str, params: str, overrides: list[str], criteria: list[str], reductions: list[float],
        json_path: Path | None) -> list[dict]:
    settings = load_settings(params, profile, overrides)
    for domain in ("source", "target"):
        stages.prepare_domain(domain, getattr(settings.data, domain), settings.data, settings.seed)
    source = stages.load_domain(settings.data.source, settings.data, settings.seed, check_images=False)
    target = stages.load_domain(settings.data.target, settings.data, settings.seed, check_images=False)
    pretrained = stages.pretrain(settings, Path(settings.outputs) / "pretrain")["checkpoint"]  # resumes if done

    base = evaluate_row(settings, pretrained, source, target)
    rows = [{"criterion": "none", "mode": "none", "target_reduction": 0.0, "measured_reduction": 0.0, **base,
             **speed_ratios(settings, pretrained, pretrained), "seconds": 0.0}]
    out_root = Path(settings.outputs) / "bench" / "pruning"
    for reduction in reductions:
        for criterion in criteria:
            began = time.perf_counter()
            run_settings = load_settings(params, profile, [*overrides, f"prune.criterion={criterion}",
                                                           f"prune.flops_reduction={reduction}"])
            result = stages.prune(run_settings, pretrained, out_root / run_name(criterion, reduction, run_settings.prune.mode))
            row = evaluate_row(settings, result["checkpoint"], source, target)
            rows.append({"criterion": criterion, "mode": run_settings.prune.mode, "target_reduction": reduction,
                         "measured_reduction": 1 - row["flops"] / base["flops"], **row,
                         **speed_ratios(settings, result["checkpoint"], pretrained),
                         "seconds": time.perf_counter() - began})
            logging.info("%s @ %.1f: rank1 %.3f mAP %.3f, %.2fx throughput", criterion, reduction,
                         row["rank1"], row["mAP"], rows[-1]["throughput_ratio"])
            if json_path:  # written after every row: a long run that stops keeps what it measured
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def retime(profile: str, params: str, overrides: list[str], json_path: Path) -> list[dict]:
    """Measure the speed ratios of an existing run's rows again, on an otherwise idle machine
    (training runs are long; a stray process during one row's timing should not cost a rerun)."""
    settings = load_settings(params, profile, overrides)
    pretrained = str(Path(settings.outputs) / "pretrain" / "model.pt")
    out_root = Path(settings.outputs) / "bench" / "pruning"
    rows = json.loads(json_path.read_text())
    for row in rows:
        checkpoint = pretrained if row["criterion"] == "none" else \
            str(out_root / run_name(row["criterion"], row["target_reduction"], row["mode"]) / "model.pt")
        row.update(speed_ratios(settings, checkpoint, pretrained))
        logging.info("%s @ %.1f: %.2fx throughput", row["criterion"], row["target_reduction"], row["throughput_ratio"])
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def markdown(rows: list[dict]) -> str:
    """The docs/RESULTS.md table of a finished run: one row per budget, one column pair per criterion."""
    lines = ["| criterion | mode | FLOPs - (target) | measured | rank-1 | mAP | target rank-1 | latency x | throughput x |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["target_reduction"], r["criterion"] != "plfp", r["criterion"])):
        lines.append(f"| {r['criterion']} | {r.get('mode', '')} | {r['target_reduction']:.1f} | "
                     f"{r['measured_reduction']:.3f} | {100 * r['rank1']:.1f} | {100 * r['mAP']:.1f} | "
                     f"{100 * r['target_rank1']:.1f} | {r['latency_ratio']:.2f} | {r['throughput_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", choices=["quick", "default"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY.PATH=VALUE")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--reductions", default=",".join(map(str, REDUCTIONS)))
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--retime", action="store_true", help="only re-measure the speed ratios of --json's rows")
    parser.add_argument("--table", action="store_true", help="only print --json's rows as a markdown table")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(args.json.read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.retime:
        rows = retime(args.profile, args.params, args.overrides, args.json)
    else:
        rows = run(args.profile, args.params, args.overrides, args.criteria.split(","),
                   [float(r) for r in args.reductions.split(",")], args.json)
    header = f"{'criterion':>9} {'target':>6} {'measured':>8} {'rank1':>6} {'mAP':>6} {'tgt r1':>6} {'lat x':>6} {'thr x':>6}"
    print(header)
    for r in rows:
        print(f"{r['criterion']:>9} {r['target_reduction']:>6.2f} {r['measured_reduction']:>8.3f} {r['rank1']:>6.3f} "
              f"{r['mAP']:>6.3f} {r['target_rank1']:>6.3f} {r['latency_ratio']:>6.2f} {r['throughput_ratio']:>6.2f}")


if __name__ == "__main__":
    main()
