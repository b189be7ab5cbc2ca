"""The training loop: cross-entropy with label smoothing + batch-hard triplet, P x K batches.

Losses are plain functions. Side effects (logging to a tracker, printing) happen in the
`on_epoch` callback, never inside the loop. A checkpoint is written atomically after every
epoch; calling `train_model` again with the same checkpoint path resumes after the last
finished epoch and, because all randomness is derived from (seed, epoch), ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid_models import signals
from reid_models.checkpoint import load_checkpoint, save_checkpoint
from reid_models.config import TrainRecipe
from reid_models.data.loading import IdentityBatchSampler, ImageSet, SeededBatches
from reid_models.models import ReIDNet

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict], None]


@runtime_checkable
class TrainingHook(Protocol):
    """Something that joins the plain ReID loop without the loop knowing what it is: a head with a
    loss or an update of its own (the cluster memory, camera proxies: `models.py`) or a teacher
    (`pruning/recovery.py`). `loss_terms` returns terms to log; the one named `added_loss` (if
    any) joins the loss. `after_step` runs after each optimizer step."""

    added_loss: str | None

    def loss_terms(self, images: torch.Tensor, out, labels: torch.Tensor,
                   cameras: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def after_step(self, model: torch.nn.Module, labels: torch.Tensor, cameras: torch.Tensor) -> None: ...


def training_hooks(model: ReIDNet, teacher=None) -> list[TrainingHook]:
    """The head (when it is a hook) first, then the teacher: camera terms before distillation,
    the memory's update before the teacher follows the student."""
    return [part for part in (model.classifier, teacher) if isinstance(part, TrainingHook)]


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """For each anchor: its farthest positive and nearest negative in the batch (Hermans et al.)."""
    distances = torch.cdist(features, features)
    same = labels[:, None] == labels[None, :]
    hardest_positive = (distances * same).max(dim=1).values
    hardest_negative = distances.masked_fill(same, float("inf")).min(dim=1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def reid_loss(out, labels: torch.Tensor, settings: TrainRecipe) -> dict[str, torch.Tensor]:
    """The training objective, as named terms: identity (smoothed CE) + batch-hard triplet."""
    id_term = identity_loss(out.logits, labels, settings.label_smoothing)
    tri_term = batch_hard_triplet_loss(out.features, labels, settings.triplet_margin)
    return {"loss": id_term + settings.triplet_weight * tri_term, "id_loss": id_term, "triplet_loss": tri_term}


def lr_factor(epoch: int, settings: TrainRecipe) -> float:
    """Linear warm-up from 10% of the rate, then cosine decay to 1% or steps of 0.1."""
    if epoch < settings.warmup_epochs:
        return 0.1 + 0.9 * epoch / settings.warmup_epochs
    if settings.schedule == "step":
        return 0.1 ** sum(epoch >= step for step in settings.step_epochs)
    span = max(1, settings.epochs - settings.warmup_epochs)
    progress = (epoch - settings.warmup_epochs) / span
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, settings: TrainRecipe, backbone_lr_scale: float = 1.0):
    """Backbone may learn slower than the head (fine-tuning); `base_lr` keeps each group's rate."""
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    groups = [
        {"params": backbone, "base_lr": settings.lr * backbone_lr_scale},
        {"params": head, "base_lr": settings.lr},
    ]
    for group in groups:
        group["lr"] = group["base_lr"]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay)
    return torch.optim.Adam(groups, weight_decay=settings.weight_decay)


def _fingerprint(settings: TrainRecipe, seed: int, train_set: ImageSet, model: torch.nn.Module) -> dict:
    """What must match for a checkpoint to be resumed rather than started over: same recipe,
    same seed, same images and labels, same architecture (a pruned model is another one)."""
    digest = hashlib.sha1(train_set.images.numpy().tobytes())
    digest.update(train_set.labels.numpy().tobytes())
    digest.update(repr([(name, tuple(value.shape)) for name, value in model.state_dict().items()]).encode())
    return {"settings": settings.model_dump(mode="json"), "seed": seed, "data": digest.hexdigest()}


def train_model(
    model: ReIDNet,
    train_set: ImageSet,
    settings: TrainRecipe,
    device: torch.device,
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    on_epoch: EpochCallback | None = None,
    backbone_lr_scale: float = 1.0,
    progress: bool = True,
    epoch_hook: Callable[[int], None] | None = None,
    teacher=None,
    epochs: tuple[int, int] | None = None,
) -> list[dict]:
    """Train `model` in place; return one metrics dict per epoch (resumed epochs included).

    `epoch_hook(epoch)` may change the weights after an epoch's updates and before its
    checkpoint (progressive pruning decays filters there), so a resumed run sees its effect.
    `teacher` (a `pruning.recovery.Teacher`) adds its distillation terms to the loss and follows
    the student after each step. `epochs=(first, stop)` trains only those epochs of the recipe's
    schedule (a step split around channel removal keeps one lr schedule).
    """
    model.to(device)
    optimizer = build_optimizer(model, settings, backbone_lr_scale)
    sampler = IdentityBatchSampler(train_set.labels.tolist(), settings.ids_per_batch, settings.images_per_id, seed,
                                   settings.batches_per_epoch)
    # Batches and augmentations are functions of (seed, epoch): nothing is drawn from torch's
    # process-wide RNG, which other scenarios running in threads draw from too.
    loader = DataLoader(train_set, batch_sampler=SeededBatches(sampler), num_workers=settings.num_workers,
                        generator=torch.Generator().manual_seed(seed))
    fingerprint = _fingerprint(settings, seed, train_set, model)
    history: list[dict] = []
    start, stop = epochs if epochs is not None else (0, settings.epochs)

    if checkpoint_path and Path(checkpoint_path).is_file():
        state = load_checkpoint(checkpoint_path)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            if teacher is not None and "teacher" in state:
                teacher.load_state(state["teacher"])
            history, start = list(state["history"]), int(state["epoch"])
            log.info("resuming from %s after epoch %d", checkpoint_path, start)
        else:
            log.warning("ignoring %s: it was written with other settings; training from scratch", checkpoint_path)

    if teacher is not None:
        teacher.to(device)
    for epoch in range(start, stop):
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(epoch, settings)
        model.train()
        sums: dict[str, float] = {}  # per loss term (distillation's too, when there is a teacher)
        correct = seen = 0
        began = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not progress, leave=False)
        for images, labels, cameras in bar:
            signals.check()  # a SIGINT/SIGTERM stops here; the last epoch's checkpoint stays
            images, labels = images.to(device), labels.to(device)
            out = model(images)
            terms = reid_loss(out, labels, settings)
            hooks = training_hooks(model, teacher)  # per batch: a round may give the model a new head
            for hook in hooks:
                extra = hook.loss_terms(images, out, labels, cameras)
                terms.update(extra)
                if hook.added_loss in extra:
                    terms["loss"] = terms["loss"] + extra[hook.added_loss]
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            for hook in hooks:
                hook.after_step(model, labels, cameras)
            n = len(labels)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() * n
            correct += int((out.logits.argmax(1) == labels).sum())
            seen += n
            bar.set_postfix(loss=f"{terms['loss'].item():.3f}", img_s=f"{seen / (time.perf_counter() - began):.0f}")
        if epoch_hook:
            epoch_hook(epoch)
        seconds = time.perf_counter() - began
        counted = max(1, seen)
        record = {
            "epoch": epoch + 1,
            **{name: total / counted for name, total in sums.items()},
            "train_accuracy": correct / counted,
            "lr": optimizer.param_groups[-1]["lr"],
            "images": seen,
            "images_per_s": seen / seconds,
            "seconds": seconds,
        }
        history.append(record)
        log.info("epoch %d/%d loss %.3f acc %.3f (%.0f img/s)", epoch + 1, settings.epochs,
                 record["loss"], record["train_accuracy"], record["images_per_s"])
        if checkpoint_path:
            save_checkpoint(checkpoint_path, {
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1, "history": history, "fingerprint": fingerprint,
                **({"teacher": teacher.state()} if teacher is not None else {}),
            })
        if on_epoch:
            on_epoch(record)
    return history
