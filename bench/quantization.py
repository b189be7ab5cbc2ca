"""What does int8 cost in rank-1, and does quantisation-aware fine-tuning win it back?

    python -m bench.quantization --profile full --seeds 0,1,2 --json docs/bench/quantization_full.json

For each seed's trained scenario models (default: adapt_only and prune_during, supervised, as
`bench.scenarios` / `bench.recovery` leave them), every variant is exported and scored with ONNX
Runtime on the target test and validation splits:
- fp32: the model as trained;
- int8_ptq: post-training static int8 (`reid_models.export.quantize_int8`, calibrated on
  `--calibration-images` target training images);
- finetune + int8_ptq: `--epochs` more float fine-tuning on the target, then the same int8: the
  control that gives post-training quantisation the same training budget;
- int8_qat: the same epochs with the shipped rounding in the forward pass
  (`reid_models.quantize`), then the same int8 export.
Paired per seed (`reid_models.stats`): int8_ptq vs fp32, int8_qat vs finetune + int8_ptq.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from bench.scenarios import comparisons_path, settings_for_seed
from bench.settings_cli import settings_parser
from reid_models import export as exporting
from reid_models import quantize
from reid_models.evaluate import evaluate_features
from reid_models.features import extract_features
from reid_models.data.loading import ImageSet, test_transform
from reid_models.stages import load_domain, load_model, training_images
from reid_models.stats import format_comparison, paired_difference, with_holm

VARIANTS = ("fp32", "int8_ptq", "finetune_int8_ptq", "int8_qat")


def score(module: torch.nn.Module, query: ImageSet, gallery: ImageSet, settings) -> dict:
    """Rank-1 and mAP, with the per-query results the paired statistics need."""
    qf = extract_features(module, query, torch.device("cpu"), settings.evaluate.batch_size)
    gf = extract_features(module, gallery, torch.device("cpu"), settings.evaluate.batch_size)
    return evaluate_features(qf, gf, query.labels.numpy(), gallery.labels.numpy(), query.camids.numpy(),
                             gallery.camids.numpy(), max_rank=settings.evaluate.max_rank,
                             query_chunk=settings.evaluate.query_chunk)


def run_model(checkpoint: Path, settings, args, seed: int, scratch: Path) -> list[dict]:
    data = settings.data
    splits = load_domain(data.target, data, check_images=False)
    target = training_images(splits, data, settings.adapt.train.augment)
    calibration = exporting.normalise(target.images[torch.randperm(len(target), generator=torch.Generator()
                                                                   .manual_seed(seed))[:args.calibration_images]])
    evaluation = {split: [ImageSet.from_items(items, data.height, data.width, test_transform(), progress=False)
                          for items in splits.evaluation_split(split)] for split in ("test", "val")}
    base = load_model(checkpoint).eval()
    rows = []
    for variant in VARIANTS:
        model = load_model(checkpoint)
        if variant == "finetune_int8_ptq":
            quantize.finetune(model, target, settings, args.epochs, args.lr_scale, seed)
        elif variant == "int8_qat":
            model = quantize.quantization_aware(model, target, settings, args.epochs, args.lr_scale, seed)
        folder = scratch / variant
        fp32 = exporting.export_onnx(model.eval(), folder / "model.onnx", data.height, data.width, {})
        shipped = fp32 if variant == "fp32" else exporting.quantize_int8(
            fp32, folder / "model.int8.onnx", calibration, args.calibration_method)
        runtime = exporting.OnnxModule(shipped, torch.get_num_threads())
        row = {"checkpoint": str(checkpoint), "scenario": checkpoint.parent.name, "variant": variant, "seed": seed,
               "size_bytes": shipped.stat().st_size, "epochs": 0 if variant in ("fp32", "int8_ptq") else args.epochs}
        for split, (query, gallery) in evaluation.items():
            metrics = score(runtime, query, gallery, settings)
            prefix = "" if split == "test" else "val_"
            row.update({f"{prefix}rank1": metrics["rank1"], f"{prefix}mAP": metrics["mAP"],
                        f"{prefix}per_query": metrics["per_query"]})
        with torch.no_grad():
            sample = evaluation["test"][0].images[:32]
            row["cosine_to_fp32"] = float(torch.nn.functional.cosine_similarity(
                runtime(exporting.normalise(sample)), base(exporting.normalise(sample))).mean())
        logging.warning("seed %d %s %s: rank-1 %.1f (val %.1f), %.1f MB", seed, checkpoint.parent.name, variant,
                        100 * row["rank1"], 100 * row["val_rank1"], row["size_bytes"] / 1e6)
        rows.append(row)
    return rows


def comparisons(rows: list[dict]) -> list[dict]:
    records = []
    for scenario in sorted({r["scenario"].rsplit("-seed", 1)[0] for r in rows}):
        by = {(r["variant"], r["seed"]): r for r in rows if r["scenario"].rsplit("-seed", 1)[0] == scenario}
        for a, b in (("int8_ptq", "fp32"), ("int8_qat", "finetune_int8_ptq"), ("int8_qat", "fp32")):
            seeds = sorted(s for (v, s) in by if v == a and (b, s) in by)
            if not seeds:
                continue
            for split, prefix in (("test", ""), ("val", "val_")):
                for metric in ("rank1", "mAP"):
                    result = paired_difference([by[(a, s)][f"{prefix}per_query"] for s in seeds],
                                               [by[(b, s)][f"{prefix}per_query"] for s in seeds], metric,
                                               a=f"{scenario} {a}", b=b, seeds=seeds)
                    records.append({"comparison": f"{scenario} {a} vs {b}", "scenario": scenario, "split": split,
                                    **result.as_dict()})
    return with_holm(records, ("scenario", "split", "metric"))


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scenarios", default="adapt_only-none-0-supervised,prune_during-plfp-0.5-supervised",
                        help="scenario keys without the seed")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs of the finetune and QAT variants")
    parser.add_argument("--lr-scale", type=float, default=0.01, help="x adapt.train.lr for that fine-tuning (at "
                        "0.1 one float epoch cost adapt_only 1.8 validation rank-1 on seed 0: too high for a model "
                        "trained to the end of its cosine schedule)")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--calibration-method", default="minmax", choices=exporting.CALIBRATION_METHODS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = []
    for seed in seeds:  # every model must exist before anything is computed
        settings = settings_for_seed(args.params, args.profile, args.overrides, seed)
        for key in args.scenarios.split(","):
            checkpoint = Path(settings.outputs) / "scenarios" / f"{key}-seed{seed}" / "model.pt"
            if not checkpoint.is_file():
                parser.error(f"{checkpoint} not found: run `python -m bench.scenarios --profile {args.profile} "
                             f"--seeds {seed}` (or bench.recovery) first")
            jobs.append((checkpoint, settings, seed))
    torch.set_num_threads(settings.orchestration.torch_threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, (checkpoint, settings, seed) in enumerate(jobs):
            rows += run_model(checkpoint, settings, args, seed, Path(scratch) / str(index))
    records = comparisons(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if "per_query" not in k} for r in rows],
                                        indent=2) + "\n")
        comparisons_path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    for record in records:
        if record["metric"] == "rank1":
            print(f"[{record['split']}] {format_comparison({**record, 'split': None})}")


if __name__ == "__main__":
    main()
