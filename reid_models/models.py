"""ReID networks: a torchreid backbone (built offline, `pretrained=False`) plus a BNNeck head.

We keep torchreid's backbones but not its heads: the backbone's `featuremaps()` feeds our own
global pooling -> BatchNorm neck -> bias-free classifier (the "BNNeck" of Bag of Tricks). The
triplet loss sees the features before the neck, the classifier those after it, and inference
returns the neck's output. Owning the head also means pruning never has to reason about
torchreid's train/eval-dependent forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# name -> torchreid builder name; the names are the `pretrain.model` values config.py accepts.
BACKBONES = ("resnet18", "resnet50", "osnet_x0_25", "osnet_x1_0", "mobilenetv2_x1_0")


def build_backbone(name: str) -> nn.Module:
    """A torchreid backbone with random weights; its own classifier head is dropped."""
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(BACKBONES)}")
    from torchreid.reid.models import build_model  # slow import: only when a model is built

    backbone = build_model(name, num_classes=1, loss="softmax", pretrained=False)
    backbone.classifier = nn.Identity()  # replaced by our BNNeck head
    return backbone


@dataclass
class ReIDOutput:
    features: torch.Tensor  # pooled, before the neck: what the triplet loss sees
    logits: torch.Tensor | None  # identity logits (training only)


class ReIDNet(nn.Module):
    def __init__(self, backbone_name: str, num_classes: int) -> None:
        super().__init__()
        self.backbone_name = backbone_name
        self.backbone = build_backbone(backbone_name)
        self.feature_dim = self._probe_feature_dim()
        self.neck = nn.BatchNorm1d(self.feature_dim)
        self.neck.bias.requires_grad_(False)  # BNNeck: no shift, so the feature space stays centred
        self.classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def _probe_feature_dim(self) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            maps = self.backbone.featuremaps(torch.zeros(1, 3, 64, 32))
        self.backbone.train(was_training)
        return int(maps.shape[1])

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.backbone.featuremaps(images)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(maps, 1), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor | ReIDOutput:
        """Training: features and logits for the losses. Eval: the embedding used for retrieval."""
        pooled = self.pooled_features(images)
        embedding = self.neck(pooled)
        if not self.training:
            return embedding
        return ReIDOutput(features=pooled, logits=self.classifier(embedding))

    def reset_classifier(self, num_classes: int) -> None:
        """A new identity head, e.g. for fine-tuning on another domain's identities. It goes on the
        model's device (initialised on the CPU first, so CPU and CUDA runs start from the same head)."""
        classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
        nn.init.normal_(classifier.weight, std=0.001)
        self.classifier = classifier.to(next(self.parameters()).device)


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but no CUDA device is available; use auto or cpu")
    return torch.device(choice)
