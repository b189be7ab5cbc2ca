"""From a FLOPs budget to how many channels each group loses.

`global` (PLFP's way): every channel's criterion score is normalised by its group's mean score
and all channels are ranked together; the N least important go, with no group losing more than
`layer_cap` of its channels. `uniform`: every group loses the same share. Either way N (or the
share) is found by bisection on the *measured* FLOPs of the pruned network, so the result lands
on the target rather than on a proxy of it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from reid_models.complexity import count_flops
from reid_models.models import ReIDNet
from reid_models.pruning.criteria import Criterion
from reid_models.pruning.graph import ChannelGraph, FilterGroup

Counts = dict[str, int]


def flops_after_removal(model: ReIDNet, counts: Counts, height: int, width: int, prune_embedding: bool) -> int:
    """FLOPs of a copy of `model` with `counts[group]` channels removed from each group.

    Which channels does not matter for FLOPs, only how many, so the first ones are taken.
    """
    trial = copy.deepcopy(model).cpu()
    graph = ChannelGraph(trial, height, width, prune_embedding)
    graph.remove_channels({name: list(range(n)) for name, n in counts.items() if n > 0})
    return count_flops(trial, height, width)


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


def _bisect(flops_for: Callable[[int], int], high: int, base_flops: int, target_reduction: float) -> int:
    """Smallest step in [0, high] whose FLOPs reduction reaches the target (FLOPs fall with it)."""
    low = 0
    while low < high:
        middle = (low + high) // 2
        if 1 - flops_for(middle) / base_flops >= target_reduction:
            high = middle
        else:
            low = middle + 1
    return low


def allocate(model: ReIDNet, groups: list[FilterGroup], criterion: Criterion, target_reduction: float,
             height: int, width: int, allocation: str = "global", layer_cap: float = 0.95,
             prune_embedding: bool = False, multiple: int = 1) -> Counts:
    """Channels to remove per group so that FLOPs fall by `target_reduction`."""
    base_flops = count_flops(model, height, width)
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

    cache: dict[int, int] = {}

    def flops_for(step: int) -> int:
        if step not in cache:
            cache[step] = flops_after_removal(model, counts_at(step), height, width, prune_embedding)
        return cache[step]

    best = _bisect(flops_for, steps, base_flops, target_reduction)
    if best > 0:  # one step less may land closer to the target (coarse groups jump)
        best = min((best - 1, best), key=lambda step: abs(1 - flops_for(step) / base_flops - target_reduction))
    reached = 1 - flops_for(best) / base_flops
    if reached < target_reduction - 0.02:
        raise ValueError(f"a FLOPs reduction of {target_reduction:.2f} is out of reach with layer_cap "
                         f"{layer_cap} (at most {reached:.3f}); lower prune.flops_reduction or raise the cap")
    return counts_at(best)
