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
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reid_models.checkpoint import save_json
from reid_models.complexity import fold_batchnorm
from reid_models.pruning.graph import ChannelGraph

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "onnxruntime_int8")
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


# --- running one conv, or a whole network, in the runtime the table is for ------------------

def _conv_onnx(shape: ConvShape, kept_in: int, kept_out: int, batch: int, path: Path) -> Path:
    """A one-conv (+ ReLU) ONNX graph, built directly: exporting through torch would take seconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from reid_models.export import INPUT, OPSET, OUTPUT

    rng = np.random.default_rng(0)
    weight = (0.1 * rng.standard_normal((kept_out, kept_in, *shape.kernel))).astype(np.float32)
    conv = helper.make_node("Conv", [INPUT, "weight", "bias"], ["conv"], kernel_shape=list(shape.kernel),
                            strides=list(shape.stride), pads=[*shape.padding, *shape.padding])
    graph = helper.make_graph(
        [conv, helper.make_node("Relu", ["conv"], [OUTPUT])], "conv",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", kept_in, *shape.input_size])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "weight"),
                     numpy_helper.from_array(np.zeros(kept_out, np.float32), "bias")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)
    return path


def _onnx_runner(fp32: Path, runtime: str, threads: int, inputs: torch.Tensor) -> Callable[[], object]:
    from reid_models.export import INPUT, quantize_int8, session

    if runtime == "onnxruntime_int8":  # calibrated on random input: speed does not depend on the scales
        fp32 = quantize_int8(fp32, fp32.with_suffix(".int8.onnx"), torch.randn(8, *inputs.shape[1:]))
    runtime_session, feed = session(fp32, threads), {INPUT: inputs.numpy()}
    return lambda: runtime_session.run(None, feed)


def _conv_runner(shape: ConvShape, kept_in: int, kept_out: int, batch: int, runtime: str, threads: int,
                 scratch: Path) -> Callable[[], object]:
    """One forward of a conv (+ ReLU) at the given widths; in PyTorch channels_last, as
    `complexity.measure` times whole networks."""
    images = torch.randn(batch, kept_in, *shape.input_size)
    if runtime != "torch":
        path = _conv_onnx(shape, kept_in, kept_out, batch, scratch / f"conv-{kept_in}-{kept_out}.onnx")
        return _onnx_runner(path, runtime, threads, images)
    layer = nn.Sequential(nn.Conv2d(kept_in, kept_out, shape.kernel, shape.stride, shape.padding, bias=True),
                          nn.ReLU(inplace=True)).eval().to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
    return lambda: layer(images)


def _network_runner(network: nn.Module, height: int, width: int, batch: int, runtime: str, threads: int,
                    scratch: Path) -> Callable[[], object]:
    """One forward of a whole network, BatchNorm folded (or exported, which folds it), on a CPU
    copy: the network itself may be training, on another device."""
    network = copy.deepcopy(network).cpu().eval()
    images = torch.randn(batch, 3, height, width)
    if runtime != "torch":
        from reid_models.export import export_onnx

        path = export_onnx(network, scratch / f"network-{id(network)}.onnx", height, width, {})
        return _onnx_runner(path, runtime, threads, images)
    folded = fold_batchnorm(network, height, width).to(memory_format=torch.channels_last).eval()
    images = images.contiguous(memory_format=torch.channels_last)
    return lambda: folded(images)


def _alternate(runners: list[Callable[[], object]], rounds: int, warmup: int = 3) -> list[float]:
    """Median seconds of each runner, timed in turn every round (so a change of machine speed
    reaches all of them alike)."""
    times: list[list[float]] = [[] for _ in runners]
    with torch.no_grad():
        for round_ in range(warmup + rounds):
            for run, seconds in zip(runners, times):
                began = time.perf_counter()
                run()
                if round_ >= warmup:
                    seconds.append(time.perf_counter() - began)
    return [statistics.median(seconds) for seconds in times]


class _Threads:
    """torch's thread count set for a block (ONNX Runtime's is per session)."""

    def __init__(self, threads: int) -> None:
        self.threads, self.previous = threads, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.previous)


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


def time_networks(networks: list[nn.Module], height: int, width: int, threads: int, batch: int = 1,
                  runtime: str = "torch", rounds: int = 30) -> list[float]:
    """Median seconds per forward of each network in `runtime`, timed alternately."""
    with tempfile.TemporaryDirectory() as scratch, _Threads(threads):
        return _alternate([_network_runner(network, height, width, batch, runtime, threads, Path(scratch))
                           for network in networks], rounds)


def measured_reduction(model: nn.Module, pruned: nn.Module, height: int, width: int, threads: int, batch: int = 1,
                       runtime: str = "torch", rounds: int = 30) -> float:
    """1 - latency(pruned) / latency(model) in `runtime`, the two timed alternately."""
    whole, smaller = time_networks([model, pruned], height, width, threads, batch, runtime, rounds)
    return 1 - smaller / whole


def measure_table(model: nn.Module, height: int, width: int, threads: int, batch: int = 1,
                  runtime: str = "torch", repeats: int = 7) -> LatencyTable:
    """Time every distinct conv of `model` on the channel grid (seconds in PyTorch, about a
    minute in ONNX Runtime int8, where every grid point is quantised)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"prune.latency_runtime must be one of {RUNTIMES}, got {runtime!r}")
    shapes = conv_shapes(model, height, width)
    table = LatencyTable(machine_id(), runtime, threads, batch, height, width,
                         layers={name: shape.key for name, shape in shapes.items()})
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, _Threads(threads):
        for shape in {shape.key: shape for shape in shapes.values()}.values():
            ins, outs = _grid(shape.in_channels), _grid(shape.out_channels)
            seconds = np.array([[_alternate([_conv_runner(shape, i, o, batch, runtime, threads, Path(scratch))],
                                            repeats)[0] for o in outs] for i in ins])
            # More channels never cost less time: a running maximum along both axes removes the
            # timing noise that would make the predicted latency rise as channels go.
            seconds = np.maximum.accumulate(np.maximum.accumulate(seconds, axis=0), axis=1)
            table.grids[shape.key] = {"in": ins, "out": outs, "seconds": seconds.tolist()}
        halved = copy.deepcopy(model).cpu()
        graph = ChannelGraph(halved, height, width)
        graph.remove_channels({group.name: list(range(group.channels // 2)) for group in graph.filter_groups()})
        networks = [model, halved]
        table.fit(networks, time_networks(networks, height, width, threads, batch, runtime, 4 * repeats))
    log.info("latency table (%s): %d conv shapes timed in %.1f s (%d threads, batch %d); convs x%.2f, overhead "
             "%.2f of %.2f ms", runtime, len(table.grids), time.perf_counter() - began, threads, batch,
             table.conv_factor, 1000 * table.overhead_seconds, 1000 * table.network_seconds(model))
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
