"""Latency budgets: what a pruned network costs in time on this machine, without timing it.

Removing a channel saves time only where the runtime makes it so: a conv's latency depends on
its input and output channel counts in steps, not in proportion to FLOPs. So, as HALP does
(Shen et al., NeurIPS 2022), we measure a *latency table* once per machine: for every distinct
conv of the network (kernel, stride, channels, input size), the time of that conv (BatchNorm
folded, plus its ReLU) at a grid of kept input x output channel counts, in the runtime and thread
count the model will ship with. A pruned network's latency is then predicted from the table
(bilinear between grid points): the sum over its convs at their new widths, times a factor, plus
a fixed overhead. Both are fitted to two whole networks timed with the table, the unpruned one
and one with every channel group halved: inside a network a conv runs slower than alone (its
input is no longer in the cache), and per-op dispatch, pooling and the head cost time that
pruning does not remove. `bench.latency` measures how well the prediction holds.

Tables are cached as JSON under `prune.latency_cache`, one file per machine (host and CPU model),
runtime, threads, batch, input size and network, so only the first pruning run pays for them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reid_models.checkpoint import save_json
from reid_models.complexity import fold_batchnorm, time_forward
from reid_models.pruning.graph import ChannelGraph

log = logging.getLogger(__name__)

RUNTIMES = ("torch",)
GRID_STEPS = 8  # kept-channel grid per dimension: 1/8, 2/8, ... 8/8 of the conv's full width


def machine_id() -> str:
    """Host and CPU model: tables from another machine (or another CPU) are not reused."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} / {cpu}"


@dataclass
class ConvShape:
    """One conv as the table knows it: its unpruned widths and what else fixes its cost."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    input_size: tuple[int, int]  # height, width of its input

    @property
    def key(self) -> str:
        return (f"in{self.in_channels}-out{self.out_channels}-k{self.kernel[0]}x{self.kernel[1]}"
                f"-s{self.stride[0]}x{self.stride[1]}-p{self.padding[0]}x{self.padding[1]}"
                f"-at{self.input_size[0]}x{self.input_size[1]}")


def conv_shapes(model: nn.Module, height: int, width: int) -> dict[str, ConvShape]:
    """Every conv of `model` by module name, with the input size it sees on one image."""
    shapes: dict[str, ConvShape] = {}
    names = {module: name for name, module in model.named_modules()}

    def record(conv: nn.Conv2d, inputs, output) -> None:
        if conv.groups != 1:
            raise ValueError(f"{names[conv]}: prune.budget: latency supports plain convs only (groups=1), "
                             f"this one has groups={conv.groups}; use prune.budget: flops for this network")
        shapes[names[conv]] = ConvShape(conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                                        tuple(conv.stride), tuple(conv.padding), tuple(inputs[0].shape[-2:]))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return shapes


def _grid(channels: int) -> list[int]:
    return sorted({max(1, round(channels * step / GRID_STEPS)) for step in range(1, GRID_STEPS + 1)})


@torch.no_grad()
def _time_conv(shape: ConvShape, kept_in: int, kept_out: int, batch: int, repeats: int) -> float:
    """Median seconds of one conv (+ ReLU) at the given widths, channels_last as
    `complexity.measure` times whole networks."""
    layer = nn.Sequential(nn.Conv2d(kept_in, kept_out, shape.kernel, shape.stride, shape.padding, bias=True),
                          nn.ReLU(inplace=True)).eval().to(memory_format=torch.channels_last)
    images = torch.randn(batch, kept_in, *shape.input_size).contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        layer(images)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        layer(images)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


@dataclass
class LatencyTable:
    """Measured conv latencies (seconds) on a grid of kept input x output channels, per conv shape."""

    machine: str
    runtime: str
    threads: int
    batch: int
    height: int
    width: int
    conv_factor: float = 1.0  # a conv's time inside the network / alone
    overhead_seconds: float = 0.0  # what pruning channels does not remove
    layers: dict[str, str] = field(default_factory=dict)  # conv name -> shape key
    grids: dict[str, dict] = field(default_factory=dict)  # shape key -> {"in": [...], "out": [...], "seconds": [[...]]}

    def conv_seconds(self, name: str, kept_in: int, kept_out: int) -> float:
        grid = self.grids[self.layers[name]]
        # Along the output channels on every input row, then along the input channels;
        # below the smallest grid point the time is taken as that point's (no extrapolation).
        rows = [np.interp(kept_out, grid["out"], row) for row in grid["seconds"]]
        return float(np.interp(kept_in, grid["in"], rows))

    def network_seconds(self, model: nn.Module) -> float:
        """Predicted time of `model` (pruned or not): its convs at their widths, plus the overhead."""
        return self.conv_factor * self.convs_alone(model) + self.overhead_seconds

    def convs_alone(self, model: nn.Module) -> float:
        """Sum of the table's times over the convs of `model` at their widths."""
        total = 0.0
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                if name not in self.layers:
                    raise KeyError(f"conv {name!r} is not in the latency table of this network")
                total += self.conv_seconds(name, module.in_channels, module.out_channels)
        return total

    def fit(self, networks: list[nn.Module], measured: list[float]) -> None:
        """Factor and overhead from two networks of different widths and their measured times."""
        (wide, narrow), (wide_seconds, narrow_seconds) = map(self.convs_alone, networks), measured
        self.conv_factor = max(0.1, (wide_seconds - narrow_seconds) / max(wide - narrow, 1e-12))
        self.overhead_seconds = max(0.0, wide_seconds - self.conv_factor * wide)


@torch.no_grad()
def measured_reduction(model: nn.Module, pruned: nn.Module, height: int, width: int, threads: int, batch: int = 1,
                       rounds: int = 30) -> float:
    """1 - latency(pruned) / latency(model), both BatchNorm-folded and channels_last, timed in turn
    every round (so a change of machine speed reaches both alike); medians over rounds."""
    networks = [fold_batchnorm(network.cpu(), height, width).to(memory_format=torch.channels_last).eval()
                for network in (model, pruned)]
    images = torch.randn(batch, 3, height, width).contiguous(memory_format=torch.channels_last)
    times: list[list[float]] = [[], []]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for round_ in range(3 + rounds):
            for network, seconds in zip(networks, times):
                began = time.perf_counter()
                network(images)
                if round_ >= 3:
                    seconds.append(time.perf_counter() - began)
    finally:
        torch.set_num_threads(previous)
    return 1 - statistics.median(times[1]) / statistics.median(times[0])


def measure_table(model: nn.Module, height: int, width: int, threads: int, batch: int = 1,
                  runtime: str = "torch", repeats: int = 7) -> LatencyTable:
    """Time every distinct conv of `model` on the channel grid (a few seconds to a minute)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"prune.latency_runtime must be one of {RUNTIMES}, got {runtime!r}")
    shapes = conv_shapes(model, height, width)
    table = LatencyTable(machine_id(), runtime, threads, batch, height, width,
                         layers={name: shape.key for name, shape in shapes.items()})
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    began = time.perf_counter()
    try:
        for shape in {shape.key: shape for shape in shapes.values()}.values():
            ins, outs = _grid(shape.in_channels), _grid(shape.out_channels)
            seconds = np.array([[_time_conv(shape, i, o, batch, repeats) for o in outs] for i in ins])
            # More channels never cost less time: a running maximum along both axes removes the
            # timing noise that would make the predicted latency rise as channels go.
            seconds = np.maximum.accumulate(np.maximum.accumulate(seconds, axis=0), axis=1)
            table.grids[shape.key] = {"in": ins, "out": outs, "seconds": seconds.tolist()}
        halved = copy.deepcopy(model).cpu()
        graph = ChannelGraph(halved, height, width)
        graph.remove_channels({group.name: list(range(group.channels // 2)) for group in graph.filter_groups()})
        networks = [model, halved]
        table.fit(networks, [time_forward(fold_batchnorm(network, height, width), batch, height, width,
                                          repeats=4 * repeats, channels_last=True) for network in networks])
    finally:
        torch.set_num_threads(previous)
    log.info("latency table: %d conv shapes timed in %.1f s (%d threads, batch %d); convs x%.2f, overhead "
             "%.2f of %.2f ms", len(table.grids), time.perf_counter() - began, threads, batch, table.conv_factor,
             1000 * table.overhead_seconds, 1000 * table.network_seconds(model))
    return table


def cache_path(cache_dir: str | Path, model: nn.Module, height: int, width: int, threads: int, batch: int,
               runtime: str) -> Path:
    """The cache file of one machine, runtime, thread count, batch, input size and network shape."""
    shapes = sorted((name, shape.key) for name, shape in conv_shapes(model, height, width).items())
    key = json.dumps([machine_id(), runtime, threads, batch, height, width, shapes])
    return Path(cache_dir) / f"latency-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def load_or_measure(cache_dir: str | Path, model: nn.Module, height: int, width: int, threads: int,
                    batch: int = 1, runtime: str = "torch") -> LatencyTable:
    """The cached table for this machine and network, measured and saved (atomically) if absent."""
    path = cache_path(cache_dir, model, height, width, threads, batch, runtime)
    if path.exists():
        return LatencyTable(**json.loads(path.read_text()))
    table = measure_table(model, height, width, threads, batch, runtime)
    save_table(table, cache_dir, model)
    return table


def save_table(table: LatencyTable, cache_dir: str | Path, model: nn.Module) -> Path:
    """Cache `table` (measured on `model`) where `load_or_measure` looks for it."""
    path = cache_path(cache_dir, model, table.height, table.width, table.threads, table.batch, table.runtime)
    save_json(path, asdict(table))
    log.info("latency table saved to %s", path)
    return path
