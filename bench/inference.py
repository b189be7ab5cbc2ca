"""What makes a (pruned) ReID model fast on this CPU? Measured, kept only where it helps.

    python -m bench.inference --json docs/bench/inference.json

For the unpruned network and for 50%-FLOPs prunings (global PLFP allocation, with kept channels
rounded to 1 or 8, and uniform allocation), times eval-mode inference under several runtimes:
eager, BatchNorm folded into the convs, folded + channels_last, folded + TorchScript freeze.
Every variant's features are compared with eager's (max abs difference must stay < 1e-4).
Speed depends on shapes only, so the pruned shapes come from one-shot pruning without
fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import torch

from reid_models.complexity import count_flops, fold_batchnorm, time_forward
from reid_models.config import PruneSettings
from reid_models.models import ReIDNet
from reid_models.pruning.criteria import build_criterion
from reid_models.pruning.prune import prune_model


def runtimes(model: torch.nn.Module, height: int, width: int) -> dict[str, tuple[torch.nn.Module, bool]]:
    """name -> (module, channels_last)."""
    folded = fold_batchnorm(model, height, width)
    example = torch.randn(1, 3, height, width)
    with torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(fold_batchnorm(model, height, width), example))
    return {"eager": (model, False), "bn_folded": (folded, False),
            "bn_folded_channels_last": (fold_batchnorm(model, height, width), True), "bn_folded_torchscript": (scripted, False)}


def architectures(name: str, height: int, width: int, reduction: float) -> dict[str, ReIDNet]:
    torch.manual_seed(0)
    base = ReIDNet(name, num_classes=10).eval()
    variants = {"unpruned": base}
    for label, options in {"plfp_global": {}, "plfp_global_round8": {"round_channels": 8},
                           "plfp_uniform": {"allocation": "uniform"}}.items():
        model = copy.deepcopy(base)
        settings = PruneSettings(mode="oneshot", flops_reduction=reduction, **options)
        prune_model(model, build_criterion("plfp"), settings, None, torch.device("cpu"), height, width)
        variants[label] = model.eval()
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--reduction", type=float, default=0.5)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    images = torch.randn(4, 3, args.height, args.width)
    rows = []
    for arch, model in architectures(args.model, args.height, args.width, args.reduction).items():
        with torch.no_grad():
            reference = model(images)
        for runtime, (module, channels_last) in runtimes(model, args.height, args.width).items():
            with torch.no_grad():
                difference = float((module(images) - reference).abs().max())
            latency = time_forward(module, 1, args.height, args.width, args.repeats, channels_last=channels_last)
            batch = time_forward(module, 32, args.height, args.width, max(5, args.repeats // 2),
                                 channels_last=channels_last)
            rows.append({"model": args.model, "architecture": arch, "runtime": runtime,
                         "mflops": count_flops(model, args.height, args.width) / 1e6,
                         "latency_ms": 1000 * latency, "throughput_ips": 32 / batch,
                         "max_abs_diff": difference, "threads": torch.get_num_threads()})
            print(f"{arch:>20} {runtime:>24} {rows[-1]['mflops']:8.1f} MFLOPs {rows[-1]['latency_ms']:7.2f} ms "
                  f"{rows[-1]['throughput_ips']:7.1f} img/s  diff {difference:.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
