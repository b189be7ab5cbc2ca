"""Pruning criteria behind one interface.

A criterion looks at one `FilterGroup` (one row of weights per output channel) and answers two
questions: how important is each channel (`scores`, higher = keep; used to share a FLOPs
budget between layers), and which `quota` channels should go (`select`). The pruner receives a
criterion as an argument, so adding one never touches the pruner: subclass `Criterion` and add
it to `CRITERIA`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from reid_models.pruning.graph import FilterGroup


class Criterion(ABC):
    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False

    @abstractmethod
    def scores(self, group: FilterGroup) -> torch.Tensor:
        """Importance of each channel of the group (higher = more important)."""

    def select(self, group: FilterGroup, quota: int) -> list[int]:
        """The `quota` channels to remove: by default the least important ones."""
        if quota <= 0:
            return []
        return sorted(torch.argsort(self.scores(group), stable=True)[:quota].tolist())


class L1Norm(Criterion):
    """Li et al. 2017: small filters contribute little."""

    name = "l1"

    def scores(self, group: FilterGroup) -> torch.Tensor:
        return group.filters.abs().sum(1)


class L2Norm(Criterion):
    name = "l2"

    def scores(self, group: FilterGroup) -> torch.Tensor:
        return group.filters.norm(dim=1)


class FPGM(Criterion):
    """He et al. 2019: filters near the geometric median are replaceable by the others.

    The geometric median's neighbourhood is approximated, as in the paper, by the filters whose
    summed distance to all others is smallest.
    """

    name = "fpgm"

    def scores(self, group: FilterGroup) -> torch.Tensor:
        return torch.cdist(group.filters, group.filters).sum(1)


class Taylor(Criterion):
    """Molchanov et al. 2019: first-order estimate of the loss change when a channel is removed,
    with gradients accumulated over a few training batches.

    Scored on the BatchNorm after the conv (|gamma * dL/dgamma + beta * dL/dbeta|, the paper's
    best variant) where there is one: a conv followed by BN is scale-invariant, so |w * dL/dw|
    does not shrink when progressive pruning decays a filter, and the selection would wander
    from epoch to epoch. Without a BN, |sum of w * dL/dw| over the filter's weights.
    """

    name = "taylor"
    needs_gradients = True

    def scores(self, group: FilterGroup) -> torch.Tensor:
        if group.gradients is None:
            raise ValueError(f"the taylor criterion needs gradients for {group.name}: give it training data")
        if group.norm_taylor is not None and group.norm_taylor.any():
            return group.norm_taylor.abs()
        return (group.filters * group.gradients).sum(1).abs()


class RandomChoice(Criterion):
    """The control: any criterion worth its cost must beat it. Seeded per group."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, group: FilterGroup) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + sum(map(ord, group.name)))
        return torch.rand(group.channels, generator=generator)


class PLFP(Criterion):
    """Progressive Local Filter Pruning (Wang et al. 2020), the selection part.

    A filter is redundant when its *neighbours* can stand in for it: its local score is the sum
    of Euclidean distances to its k nearest filters, and a small score means it sits in a dense
    neighbourhood. Selection is greedy and repeated: take the filter with the smallest local
    score (ties: smallest mean distance to all), drop it from the distance matrix, recompute
    the neighbourhoods of those left, repeat. When k reaches the number of filters left, fall
    back to the global rule (smallest summed distance to all others, as FPGM). The progressive
    part -- decaying the selected filters epoch after epoch -- lives in `progressive.py`.
    """

    name = "plfp"

    def __init__(self, k: int = 3) -> None:
        if k < 1:
            raise ValueError(f"prune.plfp_k must be >= 1, got {k}")
        self.k = k

    def _local_scores(self, distances: torch.Tensor) -> torch.Tensor:
        left = distances.shape[0]
        if self.k >= left - 1:  # not enough neighbours: global rule
            return distances.sum(1)
        nearest = torch.topk(distances, self.k + 1, dim=1, largest=False).values  # includes self (0)
        return nearest[:, 1:].sum(1)

    def scores(self, group: FilterGroup) -> torch.Tensor:
        # For sharing a budget between layers: large local score = isolated = important.
        return self._local_scores(torch.cdist(group.filters.double(), group.filters.double())).float()

    def select(self, group: FilterGroup, quota: int) -> list[int]:
        distances = torch.cdist(group.filters.double(), group.filters.double())
        remaining = list(range(group.channels))
        selected: list[int] = []
        while len(selected) < min(quota, group.channels - 1):
            sub = distances[remaining][:, remaining]
            local = self._local_scores(sub)
            # Smallest local score, ties broken by the smallest mean distance to all filters.
            tied = torch.nonzero(local <= local.min() + 1e-9).flatten()
            best = int(tied[torch.argmin(sub[tied].mean(1))])
            selected.append(remaining.pop(best))
        return sorted(selected)


CRITERIA: dict[str, type[Criterion]] = {c.name: c for c in (PLFP, L1Norm, L2Norm, FPGM, Taylor, RandomChoice)}


def build_criterion(name: str, plfp_k: int = 3, seed: int = 0) -> Criterion:
    if name not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {name!r}; valid criteria: {', '.join(CRITERIA)}")
    if name == "plfp":
        return PLFP(k=plfp_k)
    if name == "random":
        return RandomChoice(seed=seed)
    return CRITERIA[name]()
