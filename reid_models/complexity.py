"""What a model costs: FLOPs, MACs, parameters, size on disk, CPU latency and throughput.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
multiply-accumulate of convolutions and matrix products (so MACs = FLOPs / 2); elementwise ops
(BatchNorm, ReLU, adds, pooling) are not counted, as in fvcore and most pruning papers.
Timings are medians of repeated runs after a warm-up, with the thread count recorded, because a
single run on a shared CPU says little.
"""

from __future__ import annotations

import copy
import io
import statistics
import time

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, height: int, width: int) -> int:
    """FLOPs of one eval-mode forward pass on one height x width image."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the serialised state_dict (what a checkpoint of the weights costs)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@torch.no_grad()
def fold_batchnorm(model: nn.Module, height: int = 256, width: int = 128) -> nn.Module:
    """An inference copy with every BatchNorm folded into the conv that feeds it.

    Pairs are found by one forward pass with hooks: a BatchNorm whose input is the very tensor a
    conv just returned. Not torch.fx: its tracer patches `nn.Module.__call__` for every thread
    while it traces, which breaks a scenario running a forward pass beside it. The copy is
    checked against the model; one whose outputs differ (a conv output used twice) is refused.
    """
    folded = copy.deepcopy(model).eval()
    names = {module: name for name, module in folded.named_modules()}
    conv_outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is kept so its id stays unique
    pairs: list[tuple[str, str]] = []

    def after_conv(conv, inputs, output):
        conv_outputs[id(output)] = (names[conv], output)

    def before_batchnorm(batchnorm, inputs):
        made = conv_outputs.get(id(inputs[0]))
        if made is not None:
            pairs.append((made[0], names[batchnorm]))

    hooks = [module.register_forward_hook(after_conv) for module in folded.modules() if isinstance(module, nn.Conv2d)]
    hooks += [module.register_forward_pre_hook(before_batchnorm)
              for module in folded.modules() if isinstance(module, nn.BatchNorm2d)]
    device = next(folded.parameters()).device
    images = torch.randn(2, 3, height, width, device=device)
    try:
        expected = folded(images)
    finally:
        for hook in hooks:
            hook.remove()
    conv_outputs.clear()
    for conv_name, batchnorm_name in pairs:
        fused = fuse_conv_bn_eval(folded.get_submodule(conv_name), folded.get_submodule(batchnorm_name))
        for name, replacement in ((conv_name, fused), (batchnorm_name, nn.Identity())):
            parent, _, child = name.rpartition(".")
            setattr(folded.get_submodule(parent), child, replacement)
    error = (folded(images) - expected).abs().max().item()
    if error > 1e-3 * max(1.0, expected.abs().max().item()):
        raise RuntimeError(f"folding BatchNorm into convs changed the outputs by {error:.2e}: "
                           f"a conv output is used by more than its BatchNorm in {type(model).__name__}")
    return folded


@torch.no_grad()
def time_forward(model: nn.Module, batch: int, height: int, width: int, repeats: int = 10, warmup: int = 5,
                 channels_last: bool = False) -> float:
    """Median seconds of one eval-mode forward pass on a batch."""
    model.eval()
    # A frozen TorchScript module has no parameters left; its constants live on the CPU then.
    device = next(model.parameters(), torch.empty(0)).device
    images = torch.randn(batch, 3, height, width, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(model: nn.Module, height: int, width: int, timing: bool = True, repeats: int = 10) -> dict:
    """The cost report of a model. Timings use the fastest CPU setting `bench.inference` found:
    BatchNorm folded into the convs and channels_last memory (features equal within 1e-5)."""
    flops = count_flops(model, height, width)
    report = {
        "flops": flops,
        "macs": flops // 2,
        "params": count_params(model),
        "size_bytes": size_on_disk(model),
        "threads": torch.get_num_threads(),
    }
    if timing:
        fast = fold_batchnorm(model, height, width)
        report["latency_ms"] = 1000 * time_forward(fast, 1, height, width, repeats=repeats, channels_last=True)
        batch_seconds = time_forward(fast, 32, height, width, repeats=max(3, repeats // 2), channels_last=True)
        report["throughput_ips"] = 32 / batch_seconds
    return report
