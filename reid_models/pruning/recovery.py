"""How a pruned ReID network keeps what the unpruned one knew.

- Distillation: an unpruned teacher sees the same training images; the student is pulled
  towards the teacher's features (1 - cosine) and towards its batch similarity structure (KL
  between the rows of the two similarity matrices, softened by a temperature): retrieval ranks
  by similarity, so the relations matter more than the raw vectors. The teacher is frozen, or
  a mean teacher (an exponential moving average of the student's weights, Tarvainen and Valpola
  2017) while the two still have the same shape.
- BatchNorm recalibration: removing channels changes what every later BatchNorm sees, so its
  running statistics are re-estimated with a few training batches, forward only.
- Gradual removal (Zhu and Gupta 2017): the pruned share of FLOPs ramps up over the first part
  of a step (cubic by default), the selection is zeroed and removed at a set point, and the
  small network trains in its final shape for the rest of the step (the epoch hook:
  `prune.GradualPruner`).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from reid_models.config import PruneSettings
from reid_models.data.loading import IdentityBatchSampler, ImageSet
from reid_models.models import ReIDNet

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Distillation


def distillation_terms(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """Feature term (mean 1 - cosine) and relational term (KL of the teacher's batch similarity
    rows to the student's, at `temperature`); both are zero when the features are equal."""
    student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    feature = (1 - (student * teacher).sum(1)).mean()
    student_rows = F.log_softmax(student @ student.T / temperature, dim=1)
    teacher_rows = F.log_softmax(teacher @ teacher.T / temperature, dim=1)
    relation = F.kl_div(student_rows, teacher_rows, log_target=True, reduction="batchmean")
    return {"distill_feature": feature, "distill_relation": relation}


class Teacher:
    """An unpruned copy that scores the student's training batches.

    `momentum` 0 keeps it frozen; otherwise after every optimizer step its weights move towards
    the student's (a mean teacher), as long as the shapes still match (not after removal).
    With `distill` false it adds no loss and only follows: a teacher kept for its features (the
    pseudo-labels of pruned unsupervised runs, `adapt.pseudo_labels: teacher`).
    """

    def __init__(self, model: ReIDNet, settings: PruneSettings, momentum: float = 0.0, label: str = "",
                 distill: bool = True) -> None:
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.feature_weight, self.relation_weight = settings.distill_feature_weight, settings.distill_relation_weight
        self.temperature, self.momentum, self.label = settings.distill_temperature, momentum, label
        self.distill = distill

    added_loss = "distill"  # the training loop's hook (train.TrainingHook)

    def to(self, device: torch.device) -> Teacher:
        self.model.to(device)
        return self

    def loss_terms(self, images: torch.Tensor, out, labels: torch.Tensor,
                   cameras: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.loss(images, out.features) if self.distill else {}

    def after_step(self, model: nn.Module, labels: torch.Tensor, cameras: torch.Tensor) -> None:
        self.follow(model)

    def loss(self, images: torch.Tensor, student_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted distillation terms and their sum (`distill`) for one batch."""
        with torch.no_grad():
            target = self.model.pooled_features(images)
        terms = distillation_terms(student_features, target, self.temperature)
        terms["distill"] = self.feature_weight * terms["distill_feature"] + \
            self.relation_weight * terms["distill_relation"]
        return terms

    @torch.no_grad()
    def follow(self, student: nn.Module) -> None:
        """Mean-teacher update; a no-op when frozen or once the student's shapes differ."""
        if not self.momentum:
            return
        mine, theirs = self.model.state_dict(), student.state_dict()
        if any(name not in theirs or theirs[name].shape != value.shape for name, value in mine.items()
               if not name.startswith("classifier.")):
            self.momentum = 0.0  # the student was pruned: the teacher stays as it was
            return
        for name, value in mine.items():
            if name.startswith("classifier."):  # heads are reset per step/round; the teacher needs none
                continue
            if value.dtype.is_floating_point:
                value.mul_(self.momentum).add_(theirs[name].detach(), alpha=1 - self.momentum)
            else:
                value.copy_(theirs[name])

    def state(self) -> dict:
        return {"state_dict": self.model.state_dict(), "momentum": self.momentum}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.momentum = state["momentum"]


# ---------------------------------------------------------------------------------------------
# BatchNorm recalibration


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, train_set: ImageSet, batches: int, ids_per_batch: int,
                          images_per_id: int, seed: int, device: torch.device) -> int:
    """Re-estimate every BatchNorm's running mean and variance from `batches` P x K training
    batches (train-mode forward passes, no gradients, cumulative average). Weights do not change.
    Returns the number of images used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batches <= 0 or not norms:
        return 0
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch counts equally
    was_training = model.training
    model.train()
    sampler = IdentityBatchSampler(train_set.labels.tolist(), ids_per_batch, images_per_id, seed, batches)
    seen = 0
    for indices in sampler:
        images = torch.stack([train_set[j][0] for j in indices]).to(device)
        model(images)
        seen += len(indices)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)
    log.info("BatchNorm statistics re-estimated on %d images", seen)
    return seen


# ---------------------------------------------------------------------------------------------
# Gradual removal schedule


def removal_epochs(epochs: int, remove_at: float) -> int:
    """Epochs of a step before the channels are removed (at least 1, at most all of them)."""
    return min(epochs, max(1, round(epochs * remove_at)))


def ramp_share(epoch: int, ramp_epochs: int, budget: float, shape: str = "cubic") -> float:
    """Share of FLOPs selected after `epoch` (0-based) of a `ramp_epochs` ramp: rises from a small
    share to exactly `budget` after the last ramp epoch. Cubic front-loads the pruning while the
    network is still large (Zhu and Gupta 2017); linear spreads it evenly."""
    progress = min(1.0, (epoch + 1) / ramp_epochs)
    if shape == "linear":
        return budget * progress
    return budget * (1 - (1 - progress) ** 3)


def training_gflops(images: int, student_flops: int, teacher_flops: int = 0, forward_only_images: int = 0,
                    forward_only_flops: int | None = None) -> float:
    """Training compute in GFLOPs: a student step costs about 3 forward passes (forward +
    backward), a teacher only its forward; BatchNorm recalibration one forward per image of the
    (pruned) network, `forward_only_flops` (default: the student's)."""
    forward = student_flops if forward_only_flops is None else forward_only_flops
    return (images * (3 * student_flops + teacher_flops) + forward_only_images * forward) / 1e9

