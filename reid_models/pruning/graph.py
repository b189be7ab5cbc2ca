"""Which channels can be pruned together, and the physical removal, via Torch-Pruning's DepGraph.

A *channel group* is a set of output channels that must go together: a conv's own channels,
or, across a residual add, the channels of every conv that feeds the add. Torch-Pruning traces
the network once and tells us these couplings; we turn each group into a `FilterGroup` -- one
row per channel holding all the incoming weights of the coupled convs -- which is all a
criterion needs to score it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from reid_models.models import ReIDNet

OUT_CHANNEL_FNS = (tp.prune_conv_out_channels,)
# Modules that *produce* a channel: zeroing their weight and bias silences it downstream.
CHANNEL_OWNER_FNS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels,
                     tp.prune_batchnorm_out_channels)


@dataclass
class FilterGroup:
    """One prunable set of coupled output channels.

    `filters[c]` concatenates the flattened weights of every coupled conv's output channel c;
    `gradients`, when collected, has the same shape. `norm_taylor[c]`, when gradients are
    collected, sums gamma * dL/dgamma + beta * dL/dbeta over the BatchNorms of channel c: the
    first-order change of the loss when the channel's output is zeroed (Molchanov et al. 2019).
    """

    name: str  # the root conv's module name
    filters: torch.Tensor  # channels x weights
    gradients: torch.Tensor | None = None
    norm_taylor: torch.Tensor | None = None

    @property
    def channels(self) -> int:
        return self.filters.shape[0]


def _example_input(model: ReIDNet, height: int, width: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.randn(1, 3, height, width, device=device)


def _trace(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    # Trace through the classifier as well (eval mode alone would skip it), so pruning the
    # embedding also shrinks the classifier's input.
    return model.classifier(model.neck(model.pooled_features(images)))


class ChannelGraph:
    """The dependency graph of a `ReIDNet` and the channel groups a pruner may touch.

    The classifier is never pruned. The embedding (the channels feeding the BNNeck) is kept
    unless `prune_embedding` is true, so retrieval features keep their dimension. `scope`
    "internal" keeps only groups of a single conv (e.g. the first conv of a residual block), as
    PLFP's paper does on ResNet-50; "all" also prunes channels coupled across residual adds.
    """

    def __init__(self, model: ReIDNet, height: int = 128, width: int = 64, prune_embedding: bool = False,
                 scope: str = "all") -> None:
        if scope not in ("all", "internal"):
            raise ValueError(f"prune.scope must be all or internal, got {scope!r}")
        self.model = model
        was_training = model.training
        model.eval()
        self.graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=_example_input(model, height, width), forward_fn=_trace, verbose=False)
        model.train(was_training)
        ignored = [model.classifier] + ([] if prune_embedding else [model.neck])
        self.names = {module: name for name, module in model.named_modules()}
        self.groups = {self.names[g[0].dep.target.module]: g
                       for g in self.graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d])
                       if self._prunable(g, scope)}

    def _prunable(self, group, scope: str) -> bool:
        root = group[0].dep.target.module
        if not isinstance(root, nn.Conv2d) or root.out_channels < 2:
            return False
        return scope == "all" or len(list(self._coupled_convs(group))) == 1

    def _coupled_convs(self, group):
        """(conv, its channel indices, the root indices they map to) for every output-pruned conv."""
        for item in group:
            dep = item.dep
            if dep.handler in OUT_CHANNEL_FNS and isinstance(dep.target.module, nn.Conv2d):
                yield dep.target.module, tp._helpers.to_plain_idxs(item.idxs), item.root_idxs

    def _coupled_norms(self, group):
        """(batchnorm, its channel indices, the root indices they map to) for every coupled BN."""
        seen = set()
        for item in group:
            module = item.dep.target.module
            if item.dep.handler == tp.prune_batchnorm_out_channels and module.affine and module not in seen:
                seen.add(module)
                yield module, tp._helpers.to_plain_idxs(item.idxs), item.root_idxs

    def _norm_taylor(self, name: str, group, channels: int) -> torch.Tensor:
        saliency = torch.zeros(channels)
        for norm, idxs, root_idxs in self._coupled_norms(group):
            if norm.weight.grad is None:
                raise ValueError(f"{name}: no gradients collected; run collect_gradients first")
            terms = norm.weight.detach() * norm.weight.grad + norm.bias.detach() * norm.bias.grad
            saliency.index_add_(0, torch.as_tensor(root_idxs), terms[idxs].cpu())
        return saliency

    def filter_groups(self, with_gradients: bool = False) -> list[FilterGroup]:
        result = []
        for name, group in self.groups.items():
            channels = group[0].dep.target.module.out_channels
            parts, grads = [], []
            for conv, idxs, root_idxs in self._coupled_convs(group):
                order = torch.argsort(torch.as_tensor(root_idxs))  # rows in root-channel order
                rows = torch.as_tensor(idxs)[order]
                parts.append(conv.weight.detach()[rows].flatten(1).cpu())
                if with_gradients:
                    if conv.weight.grad is None:
                        raise ValueError(f"{name}: no gradients collected; run collect_gradients first")
                    grads.append(conv.weight.grad.detach()[rows].flatten(1).cpu())
            filters = torch.cat(parts, dim=1)
            assert filters.shape[0] == channels, name
            if with_gradients:
                result.append(FilterGroup(name, filters, torch.cat(grads, dim=1), self._norm_taylor(name, group, channels)))
            else:
                result.append(FilterGroup(name, filters))
        return result

    # --- soft pruning: zero or shrink channels in place, the network keeps its shape -----------

    @torch.no_grad()
    def scale_channels(self, selection: dict[str, list[int]], factor: float) -> None:
        """Multiply the selected output channels (conv weights and bias, BatchNorm weight and
        bias) of each group by `factor`: 0 masks them; 0 < factor < 1 is PLFP's progressive decay."""
        for name, channels in selection.items():
            if not channels:
                continue
            group = self.graph.get_pruning_group(self.groups[name][0].dep.target.module,
                                                 tp.prune_conv_out_channels, list(channels))
            scaled = set()  # a module can appear twice in a group (BN and depthwise: in == out)
            for item in group:
                module = item.dep.target.module
                if item.dep.handler not in CHANNEL_OWNER_FNS or module in scaled:
                    continue
                scaled.add(module)
                idxs = tp._helpers.to_plain_idxs(item.idxs)
                module.weight[idxs] *= factor
                if getattr(module, "bias", None) is not None:
                    module.bias[idxs] *= factor

    # --- hard pruning: physically remove channels ---------------------------------------------

    def remove_channels(self, selection: dict[str, list[int]]) -> None:
        """Remove the selected channels of each group; the model becomes smaller and dense."""
        modules = {name: self.groups[name][0].dep.target.module for name in selection}
        for name, channels in selection.items():
            if channels:
                group = self.graph.get_pruning_group(modules[name], tp.prune_conv_out_channels, sorted(channels))
                if not self.graph.check_pruning_group(group):
                    raise ValueError(f"{name}: removing {len(channels)} channels would leave none")
                group.prune()
        self.model.feature_dim = self.model.neck.num_features


def collect_gradients(model: ReIDNet, batches, loss_fn) -> None:
    """Accumulate weight gradients over a few batches (for gradient-based criteria)."""
    model.zero_grad(set_to_none=True)
    model.train()
    for images, labels in batches:
        loss_fn(model(images), labels).backward()
