"""The pipeline's stages as plain functions: settings and paths in, paths and metrics out.

These run in a notebook with no server; Prefect tasks in `tasks/` wrap them with caching and
tracking. Each stage validates its inputs before any long computation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from reid_models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_json
from reid_models.config import AugmentSettings, DataSettings, DomainSettings, EvaluateSettings, Settings
from reid_models.data.loading import ImageSet, relabel, test_transform, train_transform
from reid_models.data.readers import ReIDSplits, hold_out_validation, read_dataset, validate_splits
from reid_models.data.synth import generate_domain, read_info
from reid_models.evaluate import evaluate_features
from reid_models.features import extract_features
from reid_models.models import GLOBAL_RNG_LOCK, ReIDNet, load_backbone_weights, resolve_device
from reid_models.pruning.criteria import build_criterion
from reid_models.pruning.prune import prune_model
from reid_models.pruning.spec import architecture_spec, build_from_spec, load_into
from reid_models.train import EpochCallback, train_model

log = logging.getLogger(__name__)


def prepare_domain(domain: str, settings: DomainSettings, data: DataSettings) -> Path:
    """Render the synthetic domain if it is missing or was rendered with other settings or an
    older generator version; real datasets must already be on disk."""
    path = Path(settings.path)
    if settings.kind == "synthetic":
        spec = data.synth.spec(domain)
        wanted = spec.info(domain, data.seed)
        if read_info(path) != wanted:
            if (path / "manifest.csv").is_file():
                log.info("%s was rendered with other settings or generator version; rendering it again", path)
            log.info("generating the synthetic %s domain in %s", domain, path)
            generate_domain(path, domain, seed=data.seed, spec=spec, workers=data.synth.workers)
    return path


def load_domain(settings: DomainSettings, data: DataSettings, check_images: bool = True) -> ReIDSplits:
    """Read and validate a domain (clear errors before any training), then hold out the
    validation identities (`data.val_share`). Splits depend on `data.seed` only, never on the
    run's seed, so the scenarios of every seed are scored on the same queries."""
    splits = read_dataset(settings.kind, settings.path, seed=data.seed)
    report = validate_splits(splits, check_images=check_images, skip_corrupt=data.skip_corrupt)
    return hold_out_validation(report.splits, data.val_share)


def training_images(splits: ReIDSplits, data: DataSettings, augment: AugmentSettings) -> ImageSet:
    """A domain's training split, decoded once, augmented, with identities relabelled 0..N-1."""
    images = ImageSet.from_items(splits.train, data.height, data.width,
                                 train_transform(data.height, data.width, **augment.model_dump()))
    images.labels = torch.as_tensor(relabel([pid for _, pid, _ in splits.train]))
    return images


def pretrain(settings: Settings, out_dir: str | Path, on_epoch: EpochCallback | None = None,
             model: ReIDNet | None = None) -> dict:
    """Train a ReID model on the labelled source domain (`pretrain.model`, or the given untrained
    `model`, e.g. a thinner dense network). Returns the checkpoint path and history.

    With `pretrain.init`, the backbone starts from that local weights file, loaded before any data
    is read (a missing, unreadable or ill-fitting file fails at once, naming it); the recipe is then
    `pretrain.effective_recipe()` (init_recipe's fields replace the recipe's) and the key-matching
    report goes to `init_report.json`. A given `model` has no weights file of its shape: it trains
    from scratch with the plain recipe.
    """
    out_dir = Path(out_dir)
    # A fixed thread count, whoever calls: with more threads the gradient sums add up in another
    # order, so the source model (and every scenario after it) would change with the machine.
    torch.set_num_threads(settings.orchestration.torch_threads)
    init = settings.pretrain.init if model is None else None
    if settings.pretrain.init and not init:
        log.info("pretrain.init is not applied to the given %s model: it trains from scratch", model.backbone_name)
    init_report = None
    if init:
        with GLOBAL_RNG_LOCK:
            torch.manual_seed(settings.seed)
            model = ReIDNet(settings.pretrain.model, num_classes=1)  # the head is sized to the identities below
        init_report = load_backbone_weights(model, init).as_dict()
    data, train_settings = settings.data, settings.pretrain.effective_recipe() if init else settings.pretrain
    device = resolve_device(settings.device)
    images = training_images(load_domain(data.source, data), data, train_settings.augment)
    num_ids = int(images.labels.max()) + 1
    if model is None:
        with GLOBAL_RNG_LOCK:  # torchreid initialises from the global RNG; the thin network may be built beside
            torch.manual_seed(settings.seed)
            model = ReIDNet(train_settings.model, num_classes=num_ids)
    else:  # pretrain.init's backbone, or small_dense's thin network (pretrained beside the source model)
        model.reset_classifier(num_ids, generator=torch.Generator().manual_seed(settings.seed))
    if init_report:
        save_json(out_dir / "init_report.json", init_report)
    began = time.perf_counter()
    last, checkpoint = out_dir / "last.pt", out_dir / "model.pt"
    history = train_model(model, images, train_settings, device, seed=settings.seed,
                          checkpoint_path=last, on_epoch=on_epoch)
    model.cpu()
    # A model.pt newer than the last epoch's state is this training's result: keep it byte for byte.
    # Scenarios fingerprint it, and a rewrite carrying other (irrelevant) settings would re-run them all.
    if not checkpoint.is_file() or not last.is_file() or checkpoint.stat().st_mtime_ns < last.stat().st_mtime_ns:
        save_checkpoint(checkpoint, model_payload(model, settings, history, domain="source"))
    return {"checkpoint": str(checkpoint), "history": history, "seconds": time.perf_counter() - began,
            "train_images": len(images), "train_ids": num_ids, "init_report": init_report}


def model_payload(model: ReIDNet, settings: Settings, history: list[dict], **extra) -> dict:
    """A model checkpoint: weights, the architecture spec that rebuilds them, settings, history."""
    return {
        "state_dict": model.state_dict(),
        "model": model.backbone_name,
        "num_classes": model.classifier.out_features,
        "feature_dim": model.feature_dim,
        "architecture": architecture_spec(model),
        "settings": settings.model_dump(mode="json"),
        "history": history,
        **extra,
    }


def model_from_payload(payload: dict, source: str) -> ReIDNet:
    """Rebuild a (possibly pruned) model from a loaded checkpoint; no pickled code is run."""
    if "architecture" in payload:
        model = build_from_spec(payload["architecture"])
    elif "model" in payload and "num_classes" in payload:  # an unpruned model saved without a spec
        model = ReIDNet(payload["model"], num_classes=payload["num_classes"])
    else:
        raise CheckpointError(f"checkpoint {source} has no architecture; it is a training state "
                              "(last.pt), not a model (model.pt)")
    load_into(model, payload["state_dict"], source)
    return model


def load_model(checkpoint: str | Path) -> ReIDNet:
    return model_from_payload(load_checkpoint(checkpoint), str(checkpoint))


def prune(settings: Settings, checkpoint: str | Path, out_dir: str | Path,
          on_epoch: EpochCallback | None = None) -> dict:
    """Prune a trained model under `settings.prune` and fine-tune it on `prune.data`'s training split.

    Writes `model.pt` (weights + architecture spec), `architecture.json` and `prune_report.json`.
    """
    out_dir = Path(out_dir)
    data, prune_settings = settings.data, settings.prune
    criterion = build_criterion(prune_settings.criterion, prune_settings.plfp_k, settings.seed)
    payload = load_checkpoint(checkpoint)
    model = model_from_payload(payload, str(checkpoint))  # a foreign checkpoint fails here, before any work
    splits = load_domain(getattr(data, prune_settings.data), data)
    images = training_images(splits, data, prune_settings.finetune.augment)
    if prune_settings.data != payload.get("domain", "source"):
        model.reset_classifier(int(images.labels.max()) + 1)  # new identities, new head
    torch.manual_seed(settings.seed)
    report = prune_model(model, criterion, prune_settings, images, resolve_device(settings.device), data.height,
                         data.width, seed=settings.seed, checkpoint_path=out_dir / "last.pt", on_epoch=on_epoch)
    model.cpu()
    saved = save_checkpoint(out_dir / "model.pt", model_payload(model, settings, report.history,
                                                                prune=report.as_dict(), domain=prune_settings.data))
    save_json(out_dir / "architecture.json", architecture_spec(model))
    save_json(out_dir / "prune_report.json", report.as_dict())
    return {"checkpoint": str(saved), "report": report.as_dict()}


def evaluate_model(model: torch.nn.Module, splits: ReIDSplits, data: DataSettings, settings: EvaluateSettings,
                   device: torch.device, split: str = "test") -> dict:
    """Market-1501 protocol on a domain's query/gallery of `split` ("test" to report, "val" to
    tune): rank-1/5/10, mAP, mINP."""
    transform = test_transform()
    query_items, gallery_items = splits.evaluation_split(split)
    query = ImageSet.from_items(query_items, data.height, data.width, transform)
    gallery = ImageSet.from_items(gallery_items, data.height, data.width, transform)
    qf = extract_features(model, query, device, settings.batch_size)
    gf = extract_features(model, gallery, device, settings.batch_size)
    return evaluate_features(qf, gf, query.labels.numpy(), gallery.labels.numpy(), query.camids.numpy(),
                             gallery.camids.numpy(), max_rank=settings.max_rank, query_chunk=settings.query_chunk)
