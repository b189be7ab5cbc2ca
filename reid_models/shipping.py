"""Shipping a finished scenario's model: export (`export.py`), quantise, then score and time the
shipped file under ONNX Runtime for the report -- the pipeline's last step for each final model.

Images for the export's checks and int8 calibration come from the training split of the model's
own domain (never test or validation images); `int8_qat` first fine-tunes the network
quantisation-aware (`quantize.py`) on that split, with pseudo-labels for a model adapted without
target labels. Each shipped variant is saved with a stamp of what it depends on and reused while
that is unchanged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from reid_models.adapt import ClusterSettings, pseudo_labelled, pseudo_labels
from reid_models.checkpoint import atomic_write, load_checkpoint
from reid_models.complexity import time_forward
from reid_models.config import Settings
from reid_models.data.loading import ImageSet, load_images, test_transform
from reid_models.export import OnnxModule, export_model
from reid_models.features import extract_features
from reid_models.models import ReIDNet
from reid_models.quantize import quantization_aware
from reid_models.stages import evaluate_model, load_domain, model_from_payload, training_images


def model_domain(payload: dict) -> str:
    """The domain a saved model is for: the source for a pretrained model and source_only, else the
    target it was adapted to."""
    scenario = payload.get("scenario") or {}
    if payload.get("domain") == "source" or scenario.get("name") == "source_only":
        return "source"
    return "target"


def domain_training_images(payload: dict, domain: str, count: int, seed: int = 0) -> torch.Tensor:
    """`count` training images (uint8) of the model's `domain`, read as the checkpoint's settings
    say, drawn at random (seeded) from the training identities: never test or validation images."""
    settings = Settings.model_validate(payload["settings"])
    splits = load_domain(getattr(settings.data, domain), settings.data, check_images=False)
    order = np.random.default_rng(seed).permutation(len(splits.train))[:count]
    return load_images([splits.train[i][0] for i in order], settings.data.height, settings.data.width, progress=False)


def qat_training_set(model: ReIDNet, payload: dict, settings):
    """What quantisation-aware fine-tuning trains on: the training split of the model's domain,
    with its labels -- or, for a model adapted without target labels, with pseudo-labels from
    the model's own features (as its adaptation made them), outliers left out."""
    domain = model_domain(payload)
    train = training_images(load_domain(getattr(settings.data, domain), settings.data, check_images=False),
                            settings.data, settings.adapt.train.augment)
    if domain == "source" or (payload.get("scenario") or {}).get("adaptation") != "unsupervised":
        return train
    plain = ImageSet(train.images, train.labels, train.camids, test_transform())
    labels = pseudo_labels(extract_features(model, plain, torch.device("cpu")), train.camids,
                           ClusterSettings(**settings.adapt.cluster.model_dump()))
    return pseudo_labelled(train, labels)


def quantization_aware_model(model: ReIDNet, payload: dict, settings, epochs: int | None = None) -> ReIDNet:
    """A copy of `model` after quantisation-aware fine-tuning (`reid_models/quantize.py`; `epochs`,
    default `ship.qat_epochs`, at `ship.qat_lr_scale` of the adaptation lr) on `qat_training_set`:
    a float network, ready for `export_model` with int8 calibration (`int8_qat`)."""
    model = copy.deepcopy(model)
    train = qat_training_set(model, payload, settings)
    if int(train.labels.max()) + 1 != model.classifier.out_features:  # pseudo-identities: a head of theirs
        model.reset_classifier(int(train.labels.max()) + 1, generator=torch.Generator().manual_seed(settings.seed))
    return quantization_aware(model, train, settings, epochs or settings.ship.qat_epochs, settings.ship.qat_lr_scale,
                              settings.seed)


SHIPPED_FILE = "shipped.json"


def ship_folder(out_dir: Path, quantize: str) -> Path:
    """Where a scenario's model is shipped as `quantize` (none | int8_ptq | int8_qat)."""
    return Path(out_dir) / "export" / quantize


def ship_stamp(checkpoint: Path, settings, quantize: str) -> dict:
    """What a shipped variant depends on: a saved one is reused while all of it is unchanged."""
    ship = settings.ship
    stamp = {"model_mtime_ns": checkpoint.stat().st_mtime_ns, "quantize": quantize,
             "threads": settings.orchestration.torch_threads}
    if quantize != "none":
        stamp.update(calibration_images=ship.calibration_images, calibration_method=ship.calibration_method)
    if quantize == "int8_qat":
        stamp.update(qat_epochs=ship.qat_epochs, qat_lr_scale=ship.qat_lr_scale)
    return stamp


def saved_fields(out_dir: Path, settings, quantize: str) -> dict | None:
    """The `shipped_*` fields of `quantize` if it was shipped and is still current, else None."""
    checkpoint, saved = Path(out_dir) / "model.pt", ship_folder(out_dir, quantize) / SHIPPED_FILE
    if not (checkpoint.is_file() and saved.is_file()):
        return None
    previous = json.loads(saved.read_text())
    return previous["fields"] if previous.get("stamp") == ship_stamp(checkpoint, settings, quantize) else None


def saved_shipping(out_dir: Path, settings) -> list[dict]:
    """The `shipped_*` fields of every `ship.quantize` choice already shipped and still current."""
    found = (saved_fields(out_dir, settings, quantize) for quantize in settings.ship.quantize)
    return [fields for fields in found if fields is not None]


def ship_scenario(out_dir: Path, settings, quantize: str | None = None, check_images: int = 16) -> dict:
    """A finished scenario's model.pt as it ships: exported (and quantised, after
    quantisation-aware fine-tuning with `int8_qat`) into out_dir/export/<quantize>, scored on the
    target test split and timed (batch 1 and 32) under ONNX Runtime at `orchestration.torch_threads`.
    `quantize` defaults to the first of `ship.quantize`. Returns the `shipped_*` fields, saved in
    the folder's shipped.json and reused while model.pt and the settings they depend on are unchanged."""
    quantize = quantize or settings.ship.quantize[0]
    if (fields := saved_fields(out_dir, settings, quantize)) is not None:
        return fields
    checkpoint, folder = out_dir / "model.pt", ship_folder(out_dir, quantize)
    payload = load_checkpoint(checkpoint)
    model = model_from_payload(payload, str(checkpoint))
    if quantize == "int8_qat":
        model = quantization_aware_model(model, payload, settings)
    int8 = quantize in ("int8_ptq", "int8_qat")
    images = domain_training_images(payload, model_domain(payload), check_images
                                    + (settings.ship.calibration_images if int8 else 0), settings.seed)
    data = settings.data
    report = export_model(model, str(checkpoint), folder, data.height, data.width, images[:check_images],
                          images[check_images:] if int8 else None, settings.ship.calibration_method, settings.seed)
    shipped = folder / ("model.int8.onnx" if int8 else "model.onnx")
    runtime = OnnxModule(shipped, settings.orchestration.torch_threads)
    target = load_domain(data.target, data, check_images=False)
    metrics = evaluate_model(runtime, target, data, settings.evaluate, torch.device("cpu"))
    fields = {"shipped_as": f"onnx {quantize if int8 else 'fp32'}",
              "shipped_rank1": metrics["rank1"], "shipped_mAP": metrics["mAP"],
              "shipped_size_bytes": report.files[shipped.name], "onnx_fp32_size_bytes": report.files["model.onnx"],
              "shipped_cosine_to_pytorch": report.checks[shipped.name]["real"]["mean_cosine"],
              "shipped_latency_ms": 1000 * time_forward(runtime, 1, data.height, data.width),
              "shipped_throughput_ips": 32 / time_forward(runtime, 32, data.height, data.width, repeats=5)}
    stamp = ship_stamp(checkpoint, settings, quantize)
    atomic_write(folder / SHIPPED_FILE, (json.dumps({"stamp": stamp, "fields": fields}, indent=2) + "\n").encode())
    return fields
