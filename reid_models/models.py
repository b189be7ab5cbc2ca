"""ReID networks: a torchreid backbone (built offline, `pretrained=False`) plus a BNNeck head.

We keep torchreid's backbones but not its heads: the backbone's `featuremaps()` feeds our own
global pooling -> BatchNorm neck -> bias-free classifier (the "BNNeck" of Bag of Tricks). The
triplet loss sees the features before the neck, the classifier those after it, and inference
returns the neck's output. Owning the head also means pruning never has to reason about
torchreid's train/eval-dependent forward.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reid_models.checkpoint import CheckpointError, read_torch_file

log = logging.getLogger(__name__)

# name -> torchreid builder name; the names are the `pretrain.model` values config.py accepts.
BACKBONES = ("resnet18", "resnet50", "osnet_x0_25", "osnet_x1_0", "mobilenetv2_x1_0")

# torch's process-wide RNG is shared by all threads. The source model is initialised from it (torchreid's
# scheme, after torch.manual_seed), while small_dense's thin network may be built in another thread at
# the same moment, and building any nn.Module draws from that RNG. Code that seeds it and relies on
# its draws, or builds models beside such code, holds this lock, so the source model does not depend
# on what runs beside it.
GLOBAL_RNG_LOCK = threading.RLock()


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

    def reset_classifier(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        """A new identity head, e.g. for fine-tuning on another domain's identities. It goes on the
        model's device (initialised on the CPU first, so CPU and CUDA runs start from the same head).
        Its weights are drawn from `generator` (torch's global RNG without one; code that runs
        beside other scenarios passes its own, as the global RNG is shared by every thread)."""
        with GLOBAL_RNG_LOCK:  # nn.Linear draws its default init from the global RNG (then replaced)
            classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
            nn.init.normal_(classifier.weight, std=0.001, generator=generator)
        self.classifier = classifier.to(next(self.parameters()).device)


class ClusterMemory(nn.Linear):
    """Cluster-Contrast's memory (Dai et al., 2022) as the identity head of unsupervised adaptation.

    Its weight rows are the pseudo-identities' centroids, unit length; logits are the cosine
    similarities of the normalised embedding to them over `temperature`, so cross-entropy on them is
    the InfoNCE loss against the cluster memory. The centroids are not learned by gradient: after
    each optimizer step `update` moves each sample's centroid towards its feature by momentum. A
    Linear subclass, so checkpoints, loading and pruning's dependency graph see an ordinary head."""

    def __init__(self, centroids: torch.Tensor, temperature: float = 0.05, momentum: float = 0.2) -> None:
        super().__init__(centroids.shape[1], centroids.shape[0], bias=False, device=centroids.device)
        with torch.no_grad():
            self.weight.copy_(nn.functional.normalize(centroids.float(), dim=1))
        self.weight.requires_grad_(False)
        self.temperature, self.momentum = temperature, momentum
        self._last_embedding: torch.Tensor | None = None

    added_loss: str | None = None  # the training loop's hook (train.TrainingHook): no loss term of its own

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        self._last_embedding = embedding.detach()
        return nn.functional.normalize(embedding, dim=1) @ self.weight.t() / self.temperature

    def loss_terms(self, images, out, labels: torch.Tensor, cameras: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def after_step(self, model: nn.Module, labels: torch.Tensor, cameras: torch.Tensor) -> None:
        self.update(labels, cameras)

    @torch.no_grad()
    def update(self, labels: torch.Tensor, cameras: torch.Tensor | None = None) -> None:
        """Centroid of each sample of the last forward <- momentum x centroid + (1 - momentum) x
        feature, renormalised; one sample at a time, in batch order, as Cluster-Contrast does.
        (`cameras` is for the camera-proxy head; the plain memory has no use for them.)"""
        features = nn.functional.normalize(self._last_embedding, dim=1)
        for feature, label in zip(features, labels.tolist()):
            centroid = self.momentum * self.weight[label] + (1 - self.momentum) * feature
            self.weight[label] = centroid / centroid.norm().clamp_min(1e-12)


class CameraProxyMemory(ClusterMemory):
    """The cluster memory plus camera proxies (CAP, Wang et al. 2021): one centroid per
    (pseudo-identity, camera), so the loss, not only the clustering, knows the cameras.

    `camera_terms` adds, for each sample of the last forward: an intra-camera term (InfoNCE
    against the proxies of its own camera: tell identities apart where the camera is the same)
    and an inter-camera term (its identity's proxies in every camera as positives against the
    `negatives` most similar proxies of other identities: pull the cameras of one identity
    together); `camera` is their sum x `camera_weight`, added to the loss. Proxies move by
    momentum like the centroids. They are plain tensors, not state: a checkpoint keeps the head
    a Linear layer, and a resumed round starts them afresh."""

    def __init__(self, centroids: torch.Tensor, proxies: torch.Tensor, proxy_labels: torch.Tensor,
                 proxy_cameras: torch.Tensor, temperature: float = 0.05, momentum: float = 0.2,
                 negatives: int = 50, camera_weight: float = 0.5) -> None:
        super().__init__(centroids, temperature, momentum)
        self.proxies = nn.functional.normalize(proxies.float(), dim=1).to(centroids.device)
        self.proxy_labels, self.proxy_cameras = proxy_labels.to(centroids.device), proxy_cameras.to(centroids.device)
        self.index = {(int(label), int(camera)): i for i, (label, camera)
                      in enumerate(zip(proxy_labels.tolist(), proxy_cameras.tolist()))}
        self.negatives, self.camera_weight = negatives, camera_weight
        self._embedding: torch.Tensor | None = None

    added_loss = "camera"

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        self._embedding = embedding  # with its gradient: camera_terms is part of the loss
        return super().forward(embedding)

    def loss_terms(self, images, out, labels: torch.Tensor, cameras: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.camera_terms(labels, cameras)

    def camera_terms(self, labels: torch.Tensor, cameras: torch.Tensor) -> dict[str, torch.Tensor]:
        # Taken, not kept: a module holding a tensor of the autograd graph cannot be deep-copied.
        embedding, self._embedding = self._embedding, None
        features = nn.functional.normalize(embedding, dim=1)
        logits = features @ self.proxies.t() / self.temperature  # batch x proxies
        own = torch.tensor([self.index[(int(l), int(c))] for l, c in zip(labels.tolist(), cameras.tolist())],
                           device=logits.device)
        same_camera = self.proxy_cameras[None, :] == cameras[:, None].to(logits.device)
        intra = nn.functional.cross_entropy(logits.masked_fill(~same_camera, float("-inf")), own)
        positive = self.proxy_labels[None, :] == labels[:, None].to(logits.device)
        hardest = logits.masked_fill(positive, float("-inf")).topk(min(self.negatives, logits.shape[1]), dim=1).values
        denominator = torch.logsumexp(torch.cat([logits.masked_fill(~positive, float("-inf")), hardest], 1), dim=1)
        inter = -((logits - denominator[:, None]) * positive).sum(1) / positive.sum(1)
        inter = inter.mean()
        return {"camera_intra": intra, "camera_inter": inter, "camera": self.camera_weight * (intra + inter)}

    @torch.no_grad()
    def update(self, labels: torch.Tensor, cameras: torch.Tensor | None = None) -> None:
        super().update(labels)
        if cameras is None:
            return
        features = nn.functional.normalize(self._last_embedding, dim=1)
        for feature, label, camera in zip(features, labels.tolist(), cameras.tolist()):
            i = self.index[(label, camera)]
            proxy = self.momentum * self.proxies[i] + (1 - self.momentum) * feature
            self.proxies[i] = proxy / proxy.norm().clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------
# Starting weights (`pretrain.init`): a local file mapped onto the backbone by key name.
#
# torchreid's ResNets name their layers as torchvision does (conv1, bn1, layer1.0.conv1, ...), so
# an ImageNet state_dict of torchvision.models.resnet18 maps onto `ReIDNet.backbone` key for key;
# its `fc.*` has no counterpart (our head replaces it) and is reported as unexpected. torchreid
# checkpoints wrap the weights in {"state_dict": ...} with "module." prefixes (DataParallel), and
# a reid-prune model.pt prefixes them with "backbone.": such prefixes are stripped before matching.

INIT_PREFIXES = ("module.", "backbone.", "model.")
# A file is refused, not half-loaded, when it is for another network: a weight of another shape
# (resnet50 weights for resnet18 share names and even match over half of the weights by shape:
# every block's 3x3 conv and BatchNorms, but not its 1x1 convs), or below this share of the
# backbone's weights matched by name and shape (e.g. a file of another model family).
MIN_MATCHED_SHARE = 0.5
INIT_FIX = ("Fix: give a local weights file of the pretrain.model network (for resnet18, e.g. written on a machine "
            "with internet by torch.save(torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict(), "
            "'resnet18.pth')), or a torchreid checkpoint of that model; or set pretrain.init: null to train from scratch")


@dataclass
class InitReport:
    """How a weights file mapped onto a backbone (key names as the backbone names them)."""

    path: str
    model: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # backbone keys the file does not hold
    unexpected: list[str] = field(default_factory=list)  # file keys the backbone does not have
    shape_mismatched: list[str] = field(default_factory=list)  # same name, other shape: not loaded
    matched_share: float = 0.0  # share of the backbone's parameter elements loaded from the file

    def as_dict(self, examples: int = 5) -> dict:
        lists = ("matched", "missing", "unexpected", "shape_mismatched")
        return {"path": self.path, "model": self.model, "matched_share": round(self.matched_share, 4),
                **{name: len(getattr(self, name)) for name in lists},
                "examples": {name: getattr(self, name)[:examples] for name in lists}}


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: a plain state_dict or a checkpoint holding one under
    "state_dict" (or "model"). Loaded with weights_only=True: no pickled code runs."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"pretrain.init: weights file {path} not found (nothing is downloaded). {INIT_FIX}")
    try:
        payload = read_torch_file(path, "pretrain.init weights file")
    except CheckpointError as error:
        raise CheckpointError(f"{error}. {INIT_FIX}") from None
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    tensors = ({str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
               if isinstance(payload, dict) else {})
    if not tensors:
        raise CheckpointError(f"pretrain.init: {path} holds a {type(payload).__name__} with no tensors, "
                              f"not a state_dict. {INIT_FIX}")
    return tensors


def _strip_prefixes(key: str) -> str:
    while key.startswith(INIT_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_backbone_weights(model: ReIDNet, path: str | Path) -> InitReport:
    """Load a local weights file into `model.backbone` by key name (known prefixes stripped).

    Keys the file lacks keep their random init and keys the backbone lacks (e.g. ImageNet's `fc`)
    are ignored, both reported. Raises CheckpointError, naming the file and loading nothing, when it
    is for another network: a tensor of another shape, or under half of the backbone's weights matched.
    """
    state = read_weights_file(path)
    own = model.backbone.state_dict()
    report = InitReport(path=str(path), model=model.backbone_name)
    usable: dict[str, torch.Tensor] = {}
    mismatched: set[str] = set()
    for raw_key, tensor in state.items():
        key = _strip_prefixes(raw_key)
        if key not in own:
            report.unexpected.append(raw_key)
        elif tuple(tensor.shape) != tuple(own[key].shape):
            mismatched.add(key)
            report.shape_mismatched.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(own[key].shape)}")
        else:
            usable[key] = tensor
    report.matched = sorted(usable)
    report.missing = sorted(set(own) - set(usable) - mismatched)
    params = dict(model.backbone.named_parameters())
    total = sum(p.numel() for p in params.values())
    report.matched_share = sum(params[k].numel() for k in usable if k in params) / max(1, total)
    if report.shape_mismatched or report.matched_share < MIN_MATCHED_SHARE:
        summary = report.as_dict(examples=3)
        raise CheckpointError(
            f"pretrain.init: {path} does not fit {model.backbone_name}, it is for another network: "
            f"{summary['shape_mismatched']} weights have another shape (e.g. {summary['examples']['shape_mismatched']}), "
            f"{report.matched_share:.0%} of the backbone's weights match by name and shape ({summary['matched']} keys; "
            f"{summary['unexpected']} keys of the file unknown to it, e.g. {summary['examples']['unexpected']}). "
            f"{INIT_FIX}")
    model.backbone.load_state_dict(usable, strict=False)
    log.info("pretrain.init %s -> %s: %d keys matched (%.0f%% of the weights), %d missing, %d unexpected, "
             "%d shape-mismatched", path, model.backbone_name, len(report.matched), 100 * report.matched_share,
             len(report.missing), len(report.unexpected), len(report.shape_mismatched))
    if report.missing:  # unexpected keys are normal: e.g. ImageNet's fc head
        log.warning("pretrain.init: %d backbone keys are not in %s and keep their random init, e.g. %s",
                    len(report.missing), path, report.missing[:5])
    return report


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but no CUDA device is available; use auto or cpu")
    return torch.device(choice)
