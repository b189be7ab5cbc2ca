"""From a FLOPs (or latency) budget to how many channels each group loses.

`global` (PLFP's way): every channel's criterion score is normalised by its group's mean score
and all channels are ranked together; the N least important go, with no group losing more than
`layer_cap` of its channels. `uniform`: every group loses the same share. Either way N (or the
share) is found by bisection on the *measured* FLOPs of the pruned network, so the result lands
on the target rather than on a proxy of it. With a latency table (`latency.py`) the bisection
runs on the table's predicted latency instead: the criterion still decides the order, the
machine decides how far down it to go. The table is a model of the machine, so the result is
then timed against the unpruned network and the aim corrected by the error (`corrections` times).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch

from reid_models.complexity import count_flops
from reid_models.models import ReIDNet
from reid_models.pruning.criteria import Criterion
from reid_models.pruning.graph import ChannelGraph, FilterGroup
from reid_models.pruning.latency import LatencyTable, measured_reduction

Counts = dict[str, int]
log = logging.getLogger(__name__)
MAX_TABLE_ERROR = 0.2  # measured vs predicted latency reduction; more: the timing is not trusted


def network_after_removal(model: ReIDNet, counts: Counts, height: int, width: int, prune_embedding: bool
                          ) -> ReIDNet:
    """A copy of `model` with `counts[group]` channels removed from each group.

    Which channels does not matter for FLOPs or latency, only how many, so the first ones go.
    """
    trial = copy.deepcopy(model).cpu()
    graph = ChannelGraph(trial, height, width, prune_embedding)
    graph.remove_channels({name: list(range(n)) for name, n in counts.items() if n > 0})
    return trial


def _max_removable(group: FilterGroup, layer_cap: float, multiple: int) -> int:
    keep = max(1, group.channels - int(layer_cap * group.channels))
    keep = -(-keep // multiple) * multiple  # round the kept count up to the multiple
    return max(0, group.channels - min(keep, group.channels))


def _snap(removed: int, channels: int, multiple: int) -> int:
    """Remove a little less so that the kept count is a multiple of `multiple`."""
    kept = channels - removed
    return channels - min(channels, -(-kept // multiple) * multiple)


def global_ranking(groups: list[FilterGroup], criterion: Criterion, layer_cap: float, multiple: int = 1
                   ) -> list[str]:
    """Group names in the order their channels would be removed (least important first)."""
    entries = []
    for group in groups:
        scores = criterion.scores(group).double()
        normalised = torch.sort(scores / scores.mean().clamp(min=1e-12)).values
        limit = _max_removable(group, layer_cap, multiple)
        entries += [(float(value), group.name) for value in normalised[:limit]]
    entries.sort()
    return [name for _, name in entries]


def _bisect(cost_at: Callable[[int], float], high: int, base_cost: float, target_reduction: float) -> int:
    """Smallest step in [0, high] whose cost reduction reaches the target (the cost falls with it)."""
    low = 0
    while low < high:
        middle = (low + high) // 2
        if 1 - cost_at(middle) / base_cost >= target_reduction:
            high = middle
        else:
            low = middle + 1
    return low


def allocate(model: ReIDNet, groups: list[FilterGroup], criterion: Criterion, target_reduction: float,
             height: int, width: int, allocation: str = "global", layer_cap: float = 0.95,
             prune_embedding: bool = False, multiple: int = 1, latency: LatencyTable | None = None,
             corrections: int = 0) -> Counts:
    """Channels to remove per group so that FLOPs fall by `target_reduction` (with `latency`:
    so that the measured batch latency does, aiming with the table and correcting the aim by the
    measured error up to `corrections` times)."""
    if latency is None:
        def cost(network: ReIDNet) -> float:
            return count_flops(network, height, width)
    else:
        cost = latency.network_seconds
    measure = "FLOPs" if latency is None else "predicted latency"
    base_cost = cost(model)
    by_name = {group.name: group for group in groups}

    if allocation == "uniform":
        steps = 1000

        def counts_at(step: int) -> Counts:
            share = layer_cap * step / steps
            return {g.name: _snap(min(int(share * g.channels), _max_removable(g, layer_cap, multiple)),
                                  g.channels, multiple) for g in groups}
    elif allocation == "global":
        order = global_ranking(groups, criterion, layer_cap, multiple)
        steps = len(order)

        def counts_at(step: int) -> Counts:
            counts = dict.fromkeys(by_name, 0)
            for name in order[:step]:
                counts[name] += 1
            return {name: _snap(n, by_name[name].channels, multiple) for name, n in counts.items()}
    else:
        raise ValueError(f"prune.allocation must be global or uniform, got {allocation!r}")

    cache: dict[int, float] = {}

    def cost_at(step: int) -> float:
        if step not in cache:
            cache[step] = cost(network_after_removal(model, counts_at(step), height, width, prune_embedding))
        return cache[step]

    def step_for(aim: float) -> int:
        best = _bisect(cost_at, steps, base_cost, aim)
        if best > 0:  # one step less may land closer to the target (coarse groups jump)
            best = min((best - 1, best), key=lambda step: abs(1 - cost_at(step) / base_cost - aim))
        reached = 1 - cost_at(best) / base_cost
        if reached < aim - 0.02:
            raise ValueError(f"a {measure} reduction of {aim:.2f} is out of reach with layer_cap {layer_cap} "
                             f"(at most {reached:.3f}); lower prune.flops_reduction or raise the cap")
        return best

    aim = target_reduction
    best = step_for(aim)
    for _ in range(corrections if latency is not None else 0):
        pruned = network_after_removal(model, counts_at(best), height, width, prune_embedding)
        measured = measured_reduction(model, pruned, height, width, latency.threads, latency.batch,
                                      latency.runtime)
        predicted = 1 - cost_at(best) / base_cost
        if abs(measured - target_reduction) <= 0.01:
            break
        if abs(measured - predicted) > MAX_TABLE_ERROR:
            # A table this wrong is a busy machine's timing (threads waiting on each other), not a
            # model error worth following: keep the table's answer.
            log.warning("latency budget: the pruned network measured %.0f%% faster where the table says %.0f%%; "
                        "timing on a busy machine? keeping the table's allocation", 100 * measured, 100 * predicted)
            break
        aim += target_reduction - measured  # the table's error here, taken off the aim
        try:
            best = step_for(aim)
        except ValueError:  # the corrected aim is out of reach: the closest reachable is the last one
            break
    return counts_at(best)
