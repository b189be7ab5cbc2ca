"""What makes a (pruned) ReID model fast on this CPU? Measured, kept only where it helps.

    python -m bench.inference --json docs/bench/inference.json
    python -m bench.inference --checkpoints UNPRUNED.pt PRUNED.pt --json docs/bench/shipping.json

Runtimes: for the unpruned network and for 50%-FLOPs prunings (global PLFP allocation, with kept
channels rounded to 1, 8 or 16, and uniform allocation), eval-mode inference under PyTorch eager,
BatchNorm folded into the convs, folded + channels_last, folded + TorchScript freeze, and the
exported file (`reid_models.export`) under ONNX Runtime in fp32 and static int8. Every variant's
features are compared with eager's. Speed depends on shapes only, so the pruned shapes come from
one-shot pruning without fine-tuning, and int8 is calibrated on random images here.

Timing alternates: each round times one batch of every variant in turn, and a variant's figure is
its median over rounds, so a change of machine speed during the run (another process, frequency)
reaches every variant alike and the ratios between them stay fair.

Shipping (`--checkpoints`): trained models (e.g. `make run`'s adapt_only and its best pruned
model) as a serving program would get them: PyTorch (folded + channels_last), ONNX Runtime fp32,
int8 PTQ (calibrated on training images of the model's domain) and int8 QAT (`--qat-epochs` of
quantisation-aware fine-tuning on the domain's training split first, then the same int8 export):
file size, latency, throughput, and rank-1 / mAP on the domain's test split, each runtime's own
features. PyTorch runs fp32 only: int8 is shipped for ONNX Runtime (RESULTS s.4).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from reid_models import export as exporting
from reid_models import shipping
from reid_models.complexity import count_flops, fold_batchnorm, size_on_disk
from reid_models.config import PruneSettings
from reid_models.models import ReIDNet
from reid_models.pruning.criteria import build_criterion
from reid_models.pruning.prune import prune_model


class Variant:
    """A module to time, its input's memory format, and a label."""

    def __init__(self, module: torch.nn.Module, channels_last: bool = False) -> None:
        self.module, self.channels_last = module.eval(), channels_last
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.module(images)


def runtimes(model: torch.nn.Module, height: int, width: int, scratch: Path, threads: int,
             calibration: torch.Tensor) -> dict[str, Variant]:
    folded = fold_batchnorm(model, height, width)
    example = torch.randn(1, 3, height, width)
    with torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(fold_batchnorm(model, height, width), example))
    fp32 = exporting.export_onnx(model, scratch / "model.onnx", height, width, {})
    int8 = exporting.quantize_int8(fp32, scratch / "model.int8.onnx", calibration)
    return {"eager": Variant(model), "bn_folded": Variant(folded),
            "bn_folded_channels_last": Variant(fold_batchnorm(model, height, width), channels_last=True),
            "bn_folded_torchscript": Variant(scripted),
            "onnxruntime_fp32": Variant(exporting.OnnxModule(fp32, threads)),
            "onnxruntime_int8": Variant(exporting.OnnxModule(int8, threads))}


def alternate_timing(variants: dict[str, Variant], batch: int, height: int, width: int, rounds: int,
                     warmup: int = 3) -> dict[str, float]:
    """Median seconds per forward of `batch` images for each variant, timed in turn every round."""
    images = torch.randn(batch, 3, height, width)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + rounds):
        for name, variant in variants.items():
            began = time.perf_counter()
            variant(images)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - began)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def architectures(name: str, height: int, width: int, reduction: float) -> dict[str, ReIDNet]:
    torch.manual_seed(0)
    base = ReIDNet(name, num_classes=10).eval()
    variants = {"unpruned": base}
    for label, options in {"plfp_global": {}, "plfp_global_round8": {"round_channels": 8},
                           "plfp_global_round16": {"round_channels": 16},
                           "plfp_uniform": {"allocation": "uniform"}}.items():
        model = copy.deepcopy(base)
        settings = PruneSettings(mode="oneshot", flops_reduction=reduction, **options)
        prune_model(model, build_criterion("plfp"), settings, None, torch.device("cpu"), height, width)
        variants[label] = model.eval()
    return variants


def runtime_rows(args, scratch: Path) -> list[dict]:
    images = torch.randn(4, 3, args.height, args.width)
    calibration = torch.randn(64, 3, args.height, args.width)
    variants, rows = {}, {}
    for arch, model in architectures(args.model, args.height, args.width, args.reduction).items():
        with torch.no_grad():
            reference = model(images)
        folder = scratch / arch
        folder.mkdir()
        for runtime, variant in runtimes(model, args.height, args.width, folder, torch.get_num_threads(),
                                         calibration).items():
            variants[(arch, runtime)] = variant
            rows[(arch, runtime)] = {"table": "runtimes", "model": args.model, "architecture": arch,
                                     "runtime": runtime, "mflops": count_flops(model, args.height, args.width) / 1e6,
                                     "max_abs_diff": float((variant(images) - reference).abs().max()),
                                     "threads": torch.get_num_threads()}
    for batch, key in ((1, "latency_ms"), (32, "throughput_ips")):
        seconds = alternate_timing(variants, batch, args.height, args.width, args.repeats if batch == 1 else
                                   max(5, args.repeats // 2))
        for which, value in seconds.items():
            rows[which][key] = 1000 * value if batch == 1 else batch / value
    for row in rows.values():
        print(f"{row['architecture']:>20} {row['runtime']:>24} {row['mflops']:8.1f} MFLOPs {row['latency_ms']:7.2f} ms "
              f"{row['throughput_ips']:7.1f} img/s  diff {row['max_abs_diff']:.1e}")
    return list(rows.values())


def quantization_aware_file(model, payload: dict, settings, args, folder: Path, calibration: torch.Tensor) -> Path:
    """`model` after `--qat-epochs` of quantisation-aware fine-tuning (`ship.quantize: int8_qat`'s
    recipe), exported and quantised like the PTQ file: the int8 QAT row."""
    model = shipping.quantization_aware_model(model, payload, settings, args.qat_epochs)
    height, width = settings.data.height, settings.data.width
    fp32 = exporting.export_onnx(model, folder / "model.qat.onnx", height, width, {})
    return exporting.quantize_int8(fp32, folder / "model.qat.int8.onnx", exporting.normalise(calibration),
                                   args.calibration_method)


def shipping_rows(args, scratch: Path) -> list[dict]:
    """Each checkpoint under each runtime: size, speed, and accuracy on its domain's test split."""
    from reid_models.checkpoint import load_checkpoint
    from reid_models.config import Settings
    from reid_models.stages import evaluate_model, load_domain, model_from_payload

    variants, rows = {}, {}
    for index, checkpoint in enumerate(args.checkpoints):
        payload = load_checkpoint(checkpoint)
        model = model_from_payload(payload, str(checkpoint)).eval()
        settings = Settings.model_validate(payload["settings"])
        domain = shipping.model_domain(payload)
        height, width = settings.data.height, settings.data.width
        calibration = shipping.domain_training_images(payload, domain, args.calibration_images)
        folder = scratch / str(index)
        folder.mkdir()
        fp32 = exporting.export_onnx(model, folder / "model.onnx", height, width, {})
        int8 = exporting.quantize_int8(fp32, folder / "model.int8.onnx", exporting.normalise(calibration),
                                       args.calibration_method)
        threads = torch.get_num_threads()
        shipped = {"pytorch_fp32": (Variant(fold_batchnorm(model, height, width), channels_last=True),
                                    size_on_disk(model)),
                   "onnxruntime_fp32": (Variant(exporting.OnnxModule(fp32, threads)), fp32.stat().st_size),
                   "onnxruntime_int8_ptq": (Variant(exporting.OnnxModule(int8, threads)), int8.stat().st_size)}
        if args.qat_epochs:
            qat = quantization_aware_file(model, payload, settings, args, folder, calibration)
            shipped["onnxruntime_int8_qat"] = (Variant(exporting.OnnxModule(qat, threads)), qat.stat().st_size)
        splits = load_domain(getattr(settings.data, domain), settings.data, check_images=False)
        for runtime, (variant, size) in shipped.items():
            metrics = evaluate_model(variant.module, splits, settings.data, settings.evaluate, torch.device("cpu"))
            variants[(str(checkpoint), runtime)] = variant
            rows[(str(checkpoint), runtime)] = {
                "table": "shipping", "checkpoint": str(checkpoint), "runtime": runtime, "domain": domain,
                "mflops": count_flops(model, height, width) / 1e6, "size_bytes": size,
                "rank1": metrics["rank1"], "mAP": metrics["mAP"], "threads": threads,
                "calibration": f"{args.calibration_images} {domain} training images, {args.calibration_method}"
                if "int8" in runtime else None,
                "qat_epochs": args.qat_epochs if runtime.endswith("qat") else 0}
            logging.warning("%s %s: rank-1 %.1f mAP %.1f", checkpoint, runtime, 100 * metrics["rank1"],
                            100 * metrics["mAP"])
    for batch, key in ((1, "latency_ms"), (32, "throughput_ips")):
        seconds = alternate_timing(variants, batch, height, width, args.repeats if batch == 1 else
                                   max(5, args.repeats // 2))
        for which, value in seconds.items():
            rows[which][key] = 1000 * value if batch == 1 else batch / value
    for row in rows.values():
        print(f"{row['checkpoint']:>60} {row['runtime']:>22} {row['size_bytes'] / 1e6:6.1f} MB "
              f"{row['latency_ms']:7.2f} ms {row['throughput_ips']:7.1f} img/s rank-1 {100 * row['rank1']:5.1f} "
              f"mAP {100 * row['mAP']:5.1f}")
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--reduction", type=float, default=0.5)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20, help="timing rounds at batch 1 (half at batch 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--checkpoints", nargs="+", type=Path, help="trained model.pt files: the shipping table")
    parser.add_argument("--qat-epochs", type=int, default=2,
                        help="with --checkpoints: epochs of quantisation-aware fine-tuning for the int8 QAT row (0: none)")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--calibration-method", default="minmax", choices=exporting.CALIBRATION_METHODS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for checkpoint in args.checkpoints or []:
        if not checkpoint.is_file():
            parser.error(f"--checkpoints: {checkpoint} not found (a model.pt of `make run`, e.g. "
                         "outputs/scenarios/adapt_only-none-0-supervised-seed0/model.pt)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        rows = shipping_rows(args, Path(scratch)) if args.checkpoints else runtime_rows(args, Path(scratch))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
