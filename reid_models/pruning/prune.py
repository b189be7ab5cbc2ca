"""Pruning a trained ReID network: one-shot, or progressive (soft, then hard) as PLFP does.

- one-shot: select channels once, remove them physically, fine-tune the smaller network.
- progressive: fine-tune the full-size network; after every epoch re-select channels and
  multiply the selected filters (conv weights, BatchNorm weight and bias) by `decay`; a filter
  selected again keeps shrinking, one no longer selected can recover. The last decay sets the
  selection to exactly zero, and only then are the channels removed. Schedule `gradual`
  (default, recovery.py) ramps the selected share up to the budget over the first `remove_at`
  of the epochs, removes, and trains the small network for the rest; `legacy` decays the whole
  budget every epoch and removes after the last one.

All spend the same fine-tuning epochs, so they compare at equal training images; the teacher's
extra forward passes are counted in `train_gflops`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reid_models import signals
from reid_models.complexity import count_flops, count_params
from reid_models.config import PruneSettings
from reid_models.data.loading import IdentityBatchSampler, ImageSet
from reid_models.models import ReIDNet
from reid_models.pruning.budget import allocate
from reid_models.pruning.latency import load_or_measure
from reid_models.pruning.criteria import Criterion, build_criterion
from reid_models.pruning.graph import ChannelGraph
from reid_models.pruning.recovery import Teacher, ramp_share, recalibrate_batchnorm, removal_epochs, training_gflops
from reid_models.train import EpochCallback, reid_loss, train_model

log = logging.getLogger(__name__)
Selection = dict[str, list[int]]


@dataclass
class PruneReport:
    criterion: str
    mode: str
    target_reduction: float
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    channels: dict[str, dict] = field(default_factory=dict)  # group -> before, removed, rate
    history: list[dict] = field(default_factory=list)
    teacher: str = "none"
    recalibration_images: int = 0
    train_gflops: float = 0.0  # student (x3: forward + backward) + teacher forwards + recalibration

    @property
    def measured_reduction(self) -> float:
        return 1 - self.flops_after / self.flops_before

    def as_dict(self) -> dict:
        return {"criterion": self.criterion, "mode": self.mode, "target_reduction": self.target_reduction,
                "measured_reduction": self.measured_reduction, "flops_before": self.flops_before,
                "flops_after": self.flops_after, "params_before": self.params_before,
                "params_after": self.params_after, "channels": self.channels, "history": self.history,
                "teacher": self.teacher, "recalibration_images": self.recalibration_images,
                "train_gflops": self.train_gflops}


def gradient_batches(train_set: ImageSet, settings: PruneSettings, seed: int, device: torch.device
                     ) -> Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """A few P x K training batches, for criteria that score channels by gradients."""
    recipe = settings.finetune

    def batches():
        sampler = IdentityBatchSampler(train_set.labels.tolist(), recipe.ids_per_batch, recipe.images_per_id, seed)
        for i, indices in enumerate(sampler):
            if i >= settings.taylor_batches:
                break
            images = torch.stack([train_set[j][0] for j in indices]).to(device)
            yield images, train_set.labels[indices].to(device)

    return batches


class ChannelSelector:
    """Chooses the channels to remove under a FLOPs or latency budget with a given criterion."""

    def __init__(self, model: ReIDNet, criterion: Criterion, settings: PruneSettings, height: int, width: int,
                 batches: Callable[[], Iterable] | None = None) -> None:
        if criterion.needs_gradients and batches is None:
            raise ValueError(f"the {criterion.name} criterion needs training data to compute gradients")
        self.model, self.criterion, self.settings = model, criterion, settings
        self.height, self.width, self.batches = height, width, batches
        self.graph = ChannelGraph(model, height, width, settings.prune_embedding, settings.scope)
        # How many channels each group loses: the criterion's own scores, or a shared criterion's.
        self.allocator = criterion if settings.allocation_criterion is None else \
            build_criterion(settings.allocation_criterion, settings.plfp_k)
        self.latency = None if settings.budget == "flops" else load_or_measure(
            settings.latency_cache, model, height, width, settings.latency_threads, settings.latency_batch,
            settings.latency_runtime)

    def _accumulate_gradients(self) -> None:
        self.model.zero_grad(set_to_none=True)
        was_training = self.model.training
        self.model.train()
        for images, labels in self.batches():
            signals.check()
            reid_loss(self.model(images), labels, self.settings.finetune)["loss"].backward()
        self.model.train(was_training)

    def select(self, flops_reduction: float | None = None) -> Selection:
        """Channels to remove for `flops_reduction` (default: the settings' budget)."""
        if self.criterion.needs_gradients:
            self._accumulate_gradients()
        groups = self.graph.filter_groups(with_gradients=self.criterion.needs_gradients)
        reduction = self.settings.flops_reduction if flops_reduction is None else flops_reduction
        counts = allocate(self.model, groups, self.allocator, reduction, self.height,
                          self.width, self.settings.allocation, self.settings.layer_cap,
                          self.settings.prune_embedding, self.settings.round_channels, self.latency,
                          self.settings.latency_corrections)
        if self.criterion.needs_gradients:
            self.model.zero_grad(set_to_none=True)
        return {group.name: self.criterion.select(group, counts[group.name]) for group in groups}

    def zeroed_channels(self) -> Selection:
        """Channels whose filters are exactly zero: what progressive pruning leaves to remove."""
        return {group.name: torch.nonzero(group.filters.abs().sum(1) == 0).flatten().tolist()
                for group in self.graph.filter_groups()}


class ProgressivePruner:
    """PLFP's soft-then-hard schedule as an epoch hook, so any training loop can carry it
    (pruning fine-tune, supervised or unsupervised adaptation).

    After every epoch: re-select under the budget and multiply the selection by `decay`; after
    the last one (`epochs - 1`), set it to zero. `finish()` then removes the zeroed channels.
    """

    def __init__(self, selector: ChannelSelector, decay: float, epochs: int) -> None:
        self.selector, self.decay, self.last = selector, decay, epochs - 1

    def after_epoch(self, epoch: int) -> None:
        selection = self.selector.select()
        self.selector.graph.scale_channels(selection, 0.0 if epoch >= self.last else self.decay)
        log.info("epoch %d: decayed %d channels", epoch + 1, sum(map(len, selection.values())))

    def finish(self) -> dict[str, dict]:
        """Remove the zeroed channels; returns the per-group description of what went."""
        selection = self.selector.zeroed_channels()
        described = _describe(self.selector, selection)
        self.selector.graph.remove_channels(selection)
        return described


class GradualPruner(ProgressivePruner):
    """The gradual schedule's ramp (recovery.py) as an epoch hook: after ramp epoch e, select
    `ramp_share(e)` of the FLOPs and multiply it by `decay`; after the last ramp epoch select the
    whole budget and zero it. `finish()` then removes the zeroed channels, as for the legacy one."""

    def __init__(self, selector: ChannelSelector | None, settings: PruneSettings, ramp_epochs: int) -> None:
        super().__init__(selector, settings.decay, ramp_epochs)
        self.budget, self.shape = settings.flops_reduction, settings.ramp

    def after_epoch(self, epoch: int) -> None:
        if epoch > self.last:
            return
        share = ramp_share(epoch, self.last + 1, self.budget, self.shape)
        selection = self.selector.select(flops_reduction=share)
        self.selector.graph.scale_channels(selection, 0.0 if epoch == self.last else self.decay)
        log.info("ramp epoch %d: %.1f%% of FLOPs selected, %s", epoch + 1, 100 * share,
                 "zeroed" if epoch == self.last else f"x{self.decay:g}")


def _describe(selector: ChannelSelector, selection: Selection) -> dict[str, dict]:
    sizes = {group.name: group.channels for group in selector.graph.filter_groups()}
    return {name: {"before": sizes[name], "removed": len(channels), "rate": len(channels) / sizes[name]}
            for name, channels in selection.items()}


def prune_model(
    model: ReIDNet,
    criterion: Criterion,
    settings: PruneSettings,
    train_set: ImageSet | None,
    device: torch.device,
    height: int,
    width: int,
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> PruneReport:
    """Prune `model` in place (it ends physically smaller) and fine-tune it on `train_set`.

    With `settings.distill` the unpruned model, frozen, is the teacher of every fine-tuning
    epoch; after removal BatchNorm statistics are re-estimated on `train_set`. The gradual
    schedule ramps and removes in the first `remove_at` of the epochs and trains the small
    network for the rest (its own resume point, `<checkpoint>.final.pt`).
    With `train_set=None` the model is pruned one-shot with no fine-tuning (criteria that need
    gradients then fail with a clear error before any work).
    """
    model.to(device)
    batches = gradient_batches(train_set, settings, seed, device) if train_set is not None else None
    selector = ChannelSelector(model, criterion, settings, height, width, batches)
    flops_before = count_flops(model, height, width)
    report = PruneReport(criterion.name, settings.mode, settings.flops_reduction, flops_before, 0,
                         count_params(model), 0)
    teacher = Teacher(model, settings, label="the unpruned model (frozen)") \
        if settings.distill and train_set is not None else None
    report.teacher = teacher.label if teacher else "none"
    recipe = settings.finetune
    finetune = dict(seed=seed, on_epoch=on_epoch, progress=progress, teacher=teacher)
    teacher_flops = flops_before if teacher else 0

    def recalibrate() -> None:
        report.recalibration_images = recalibrate_batchnorm(
            model, train_set, settings.bn_recalibration_batches, recipe.ids_per_batch, recipe.images_per_id,
            seed, device)

    if settings.mode == "oneshot" or train_set is None:
        selection = selector.select()
        report.channels = _describe(selector, selection)
        selector.graph.remove_channels(selection)
        if train_set is not None:
            recalibrate()
            report.history = train_model(model, train_set, recipe, device, checkpoint_path=checkpoint_path,
                                         **finetune)
            report.train_gflops = training_gflops(_images(report.history), count_flops(model, height, width),
                                                  teacher_flops, report.recalibration_images)
    elif settings.schedule == "legacy":
        pruner = ProgressivePruner(selector, settings.decay, recipe.epochs)
        report.history = train_model(model, train_set, recipe, device, epoch_hook=pruner.after_epoch,
                                     checkpoint_path=checkpoint_path, **finetune)
        report.channels = pruner.finish()
        report.train_gflops = training_gflops(_images(report.history), flops_before, teacher_flops)
    else:
        ramp = removal_epochs(recipe.epochs, settings.remove_at)
        pruner = GradualPruner(selector, settings, ramp)
        report.history = train_model(model, train_set, recipe, device, epoch_hook=pruner.after_epoch,
                                     checkpoint_path=checkpoint_path, epochs=(0, ramp), **finetune)
        report.channels = pruner.finish()
        recalibrate()
        small = count_flops(model, height, width)
        report.train_gflops = training_gflops(_images(report.history), flops_before, teacher_flops,
                                              report.recalibration_images, small)
        if ramp < recipe.epochs:
            final = Path(f"{checkpoint_path}.final.pt") if checkpoint_path else None
            recovered = train_model(model, train_set, recipe, device, checkpoint_path=final,
                                    epochs=(ramp, recipe.epochs), **finetune)
            report.history += recovered
            report.train_gflops += training_gflops(_images(recovered), small, teacher_flops)

    report.flops_after, report.params_after = count_flops(model, height, width), count_params(model)
    log.info("pruned with %s (%s): FLOPs %.1fM -> %.1fM (%.1f%% fewer)", criterion.name, settings.mode,
             report.flops_before / 1e6, report.flops_after / 1e6, 100 * report.measured_reduction)
    return report


def _images(history: list[dict]) -> int:
    return sum(record.get("images", 0) for record in history)
