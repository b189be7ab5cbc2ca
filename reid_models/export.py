"""Shipping a model: the feature extractor as an ONNX file, and its int8 post-training quantisation.

What a serving program needs travels with the file: the ONNX model's metadata and a `model.json`
beside it hold the architecture spec, the preprocessing (size, colour order, scaling, mean/std)
and the checks made at export time, so nothing else of this project has to be installed to use it.

The exported graph is the eval-mode network with every BatchNorm folded into its conv (the form
`complexity.measure` times), from images (N x 3 x H x W, float32, RGB, normalised) to the BNNeck
embedding used for retrieval; no identity classifier. The batch dimension is dynamic. Export is
refused unless ONNX Runtime's features equal PyTorch's within `TOLERANCE` on random input and on
real images of the model's domain.

int8 (ONNX Runtime static quantisation, QDQ format, per-channel weights): activations are
calibrated on training images of the model's domain (never test images); the calibration method
(minmax, entropy, percentile) is a setting. The BNNeck's BatchNorm stays float: it is a per-feature
affine map on 512 values, costs nothing, and its scale is what retrieval distances are made of.

`ship_scenario` is the pipeline's last step for each final model: export, quantise (`ship`
settings), then score and time the shipped file under ONNX Runtime for the report.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from reid_models.checkpoint import atomic_write
from reid_models.complexity import fold_batchnorm
from reid_models.data.loading import IMAGENET_MEAN, IMAGENET_STD, test_transform
from reid_models.models import ReIDNet
from reid_models.pruning.spec import architecture_spec

OPSET = 18
TOLERANCE = 1e-4  # largest |ONNX - PyTorch| feature difference accepted (features are of order 1-10)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INPUT, OUTPUT = "images", "features"


class ExportError(RuntimeError):
    """The exported model does not reproduce the PyTorch model, or cannot be written."""


@dataclass(frozen=True)
class Preprocessing:
    """How a serving program turns a person crop into the model's input."""

    height: int
    width: int
    colour_order: str = "RGB"
    layout: str = "NCHW"
    resize: str = "bilinear, to height x width (no padding, aspect not kept)"
    scale: float = 1 / 255  # uint8 pixel x scale, then (x - mean) / std per channel
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class ExportReport:
    """What was written and what was checked; saved as model.json beside the ONNX file(s)."""

    checkpoint: str
    base_model: str
    feature_dim: int
    opset: int
    preprocessing: Preprocessing
    architecture: dict
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    checks: dict[str, dict] = field(default_factory=dict)  # file name -> agreement with PyTorch
    quantization: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> the model's float input, as `Preprocessing` describes it: the very
    transform evaluation uses."""
    return test_transform()(images)


def export_onnx(model: ReIDNet, path: Path, height: int, width: int, metadata: dict[str, str]) -> Path:
    """Write the folded feature extractor to `path` (one self-contained file, written atomically)."""
    import onnx

    extractor = fold_batchnorm(model.cpu().eval(), height, width)
    example = torch.randn(2, 3, height, width)
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "model.onnx"
        torch.onnx.export(extractor, (example,), raw, dynamo=True, external_data=False, verbose=False,
                          opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        graph = onnx.load(raw)
    onnx.helper.set_model_props(graph, metadata)
    return atomic_write(path, graph.SerializeToString())


def session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session (`threads` 0: the runtime's choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle worker threads sleep instead of spinning: a spinning pool takes the cores from whatever
    # runs next (PyTorch, another session), which skews any timing done beside it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModule(torch.nn.Module):
    """An exported file behind nn.Module's call: what evaluation and timing code already take.
    CPU only; `threads` 0 lets ONNX Runtime choose."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.runtime = session(self.path, threads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runtime.run([OUTPUT], {INPUT: images.detach().cpu().numpy()})[0])


@torch.no_grad()
def compare(path: Path, model: ReIDNet, inputs: torch.Tensor, batch: int = 32) -> dict:
    """How far the ONNX file's features are from PyTorch's on `inputs` (already normalised)."""
    runtime = session(path)
    model = model.cpu().eval()
    worst, cosines = 0.0, []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        expected = model(chunk).numpy()
        got = runtime.run([OUTPUT], {INPUT: chunk.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
        cosines.append((got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)))
    cosine = np.concatenate(cosines)
    return {"images": len(inputs), "max_abs_diff": worst, "min_cosine": float(cosine.min()),
            "mean_cosine": float(cosine.mean())}


def quantize_int8(fp32: Path, path: Path, calibration: torch.Tensor, method: str = "minmax", batch: int = 16) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations) of an exported
    file, activations calibrated on `calibration` (normalised training images of the model's domain)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}; valid: {', '.join(CALIBRATION_METHODS)}")

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i:i + batch].numpy() for i in range(0, len(calibration), batch))

        def get_next(self) -> dict | None:
            images = next(self.batches, None)
            return None if images is None else {INPUT: images}

    with tempfile.TemporaryDirectory() as scratch:
        prepared, quantized = Path(scratch) / "prepared.onnx", Path(scratch) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph clean-up, as ORT advises
        neck = [node.name for node in onnx.load(prepared).graph.node if node.op_type == "BatchNormalization"]
        quantize_static(str(prepared), str(quantized), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, nodes_to_exclude=neck,
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile}[method])
        graph = onnx.load(quantized)
    onnx.helper.set_model_props(graph, {prop.key: prop.value for prop in onnx.load(fp32).metadata_props})
    return atomic_write(path, graph.SerializeToString())


def export_model(model: ReIDNet, checkpoint: str, out_dir: Path, height: int, width: int,
                 check_images: torch.Tensor, calibration_images: torch.Tensor | None = None,
                 calibration_method: str = "minmax", seed: int = 0) -> ExportReport:
    """Export `model` to out_dir/model.onnx (and model.int8.onnx with calibration images), check the
    fp32 file against PyTorch on random and on real (uint8) images, and write model.json."""
    preprocessing = Preprocessing(height, width)
    report = ExportReport(checkpoint, model.backbone_name, model.feature_dim, OPSET, preprocessing,
                          architecture_spec(model))
    metadata = {"reid_prune.preprocessing": json.dumps(asdict(preprocessing)),
                "reid_prune.architecture": json.dumps(report.architecture),
                "reid_prune.checkpoint": checkpoint, "reid_prune.output": f"{OUTPUT}: BNNeck embedding, "
                "compare with cosine similarity (L2-normalise, then dot product)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, out_dir / "model.onnx", height, width, metadata)
    random_input = torch.randn(8, 3, height, width, generator=torch.Generator().manual_seed(seed))
    checks = {"random": compare(fp32, model, random_input), "real": compare(fp32, model, normalise(check_images))}
    worst = max(check["max_abs_diff"] for check in checks.values())
    if worst > TOLERANCE:
        fp32.unlink()
        raise ExportError(f"{fp32}: ONNX Runtime's features differ from PyTorch's by {worst:.2e} (> {TOLERANCE:g}); "
                          "the file was removed. Report it with the checkpoint's architecture")
    report.files[fp32.name] = fp32.stat().st_size
    report.checks[fp32.name] = checks
    (out_dir / "model.int8.onnx").unlink(missing_ok=True)  # never left from an earlier export of another model
    if calibration_images is not None:
        int8 = quantize_int8(fp32, out_dir / "model.int8.onnx", normalise(calibration_images), calibration_method)
        report.files[int8.name] = int8.stat().st_size
        report.checks[int8.name] = {"real": compare(int8, model, normalise(check_images))}
        report.quantization = {"file": int8.name, "scheme": "static int8, QDQ, per-channel int8 weights, uint8 "
                               "activations; BNNeck BatchNorm kept float", "calibration_method": calibration_method,
                               "calibration_images": len(calibration_images)}
    atomic_write(out_dir / "model.json", (json.dumps(report.as_dict(), indent=2) + "\n").encode())
    return report


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
    from reid_models.config import Settings
    from reid_models.data.loading import load_images
    from reid_models.stages import load_domain

    settings = Settings.model_validate(payload["settings"])
    splits = load_domain(getattr(settings.data, domain), settings.data, check_images=False)
    order = np.random.default_rng(seed).permutation(len(splits.train))[:count]
    return load_images([splits.train[i][0] for i in order], settings.data.height, settings.data.width, progress=False)


def qat_training_set(model: ReIDNet, payload: dict, settings):
    """What quantisation-aware fine-tuning trains on: the training split of the model's domain,
    with its labels -- or, for a model adapted without target labels, with pseudo-labels from
    the model's own features (as its adaptation made them), outliers left out."""
    from reid_models.adapt import ClusterSettings, pseudo_labelled, pseudo_labels
    from reid_models.data.loading import ImageSet
    from reid_models.features import extract_features
    from reid_models.stages import load_domain, training_images

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
    import copy

    from reid_models.quantize import quantization_aware

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
    from reid_models.checkpoint import load_checkpoint
    from reid_models.complexity import time_forward
    from reid_models.stages import evaluate_model, load_domain, model_from_payload

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
