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

This is the low room: it knows models and ONNX, not the pipeline (`pruning/latency.py` times
ONNX Runtime through it). Shipping a scenario's model -- its data, quantisation-aware fine-tuning,
scoring the shipped file -- is `reid_models/shipping.py`, above `stages`.
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
