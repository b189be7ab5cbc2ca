"""`reid-prune export`: a pruned model as ONNX (and int8) that ONNX Runtime runs like PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from reid_models import export as exporting
from reid_models import shipping
from reid_models.checkpoint import save_checkpoint
from reid_models.config import load_settings
from reid_models.pruning.criteria import build_criterion
from reid_models.pruning.prune import prune_model
from reid_models.stages import load_model, model_payload
from tests.conftest import PARAMS, quick_overrides
from tests.test_pruning import trained_looking

H, W = 128, 64


@pytest.fixture(scope="module")
def pruned_checkpoint(tiny_domains, tmp_path_factory):
    """A resnet18 with half its FLOPs removed, saved as an adapted scenario's model.pt is."""
    root = tmp_path_factory.mktemp("export")
    settings = load_settings(PARAMS, "quick", quick_overrides(root, tiny_domains))
    model = trained_looking("resnet18")
    prune_model(model, build_criterion("l1"), settings.prune.model_copy(update={"mode": "oneshot"}), None,
                torch.device("cpu"), H, W)
    path = root / "model.pt"
    save_checkpoint(path, model_payload(model, settings, [], scenario={"name": "prune_after", "adaptation": "supervised"}))
    return path


def exported(checkpoint, out, *options: str):
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(out), "--check-images", "8", *options])
    assert result.exit_code == 0, result.output
    return result


def onnx_features(path, images: torch.Tensor) -> np.ndarray:
    return exporting.session(path).run(["features"], {"images": images.numpy()})[0]


def test_the_onnx_file_computes_pytorchs_features_at_any_batch_and_carries_its_preprocessing(pruned_checkpoint, tmp_path):
    exported(pruned_checkpoint, tmp_path)
    model = load_model(pruned_checkpoint).eval()
    for batch in (1, 5):  # a dynamic batch dimension: the export traced batch 2
        images = torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(images).numpy()
        assert np.abs(onnx_features(tmp_path / "model.onnx", images) - expected).max() <= 1e-4
    graph = onnx.load(tmp_path / "model.onnx")
    assert not any(node.op_type == "BatchNormalization" and "backbone" in node.name for node in graph.graph.node), \
        "BatchNorm of the backbone should be folded into its convs"
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    preprocessing = json.loads(metadata["reid_prune.preprocessing"])
    assert (preprocessing["height"], preprocessing["width"], preprocessing["colour_order"]) == (H, W, "RGB")
    assert json.loads(metadata["reid_prune.architecture"]) == json.loads((tmp_path / "model.json").read_text())["architecture"]
    report = json.loads((tmp_path / "model.json").read_text())
    assert report["checks"]["model.onnx"]["real"]["images"] == 8
    assert report["checks"]["model.onnx"]["real"]["max_abs_diff"] <= exporting.TOLERANCE


def test_int8_file_is_smaller_and_close_to_the_float_model(pruned_checkpoint, tmp_path):
    result = exported(pruned_checkpoint, tmp_path, "--quantize", "int8_ptq", "--calibration-images", "32")
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    assert int8.stat().st_size < fp32.stat().st_size / 3
    nodes = {node.op_type for node in onnx.load(int8).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= nodes
    report = json.loads((tmp_path / "model.json").read_text())
    assert report["quantization"]["calibration_images"] == 32
    # benchmark images drawn at random from the training split: int8 features point where fp32's do
    assert report["checks"]["model.int8.onnx"]["real"]["min_cosine"] > 0.99
    assert "model.int8.onnx" in result.output


def test_an_export_that_differs_from_pytorch_is_refused_and_removed(pruned_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(exporting, "TOLERANCE", 0.0)  # float rounding alone then exceeds it
    model = load_model(pruned_checkpoint)
    images = torch.randint(0, 256, (4, 3, H, W), dtype=torch.uint8)
    with pytest.raises(exporting.ExportError, match="removed"):
        exporting.export_model(model, str(pruned_checkpoint), tmp_path, H, W, images)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.json").exists()


def test_bad_options_name_the_option_without_a_traceback(pruned_checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["export", str(pruned_checkpoint), "--out", str(tmp_path), "--quantize", "int4"])
    assert result.exit_code == 2
    assert "--quantize" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "not found" in missing.output and "Traceback" not in missing.output
    assert not any(tmp_path.iterdir())


def test_int8_qat_ships_an_unsupervised_model_fine_tuned_on_its_own_pseudo_labels(tiny_domains, tmp_path,
                                                                                    monkeypatch):
    """ship.quantize: int8_qat -- quantisation-aware fine-tuning before the int8 export; a model
    adapted without target labels gets none here either: it trains on its own pseudo-labels."""
    from reid_models import quantize
    from reid_models.adapt import ClusterSettings, pseudo_labels
    from reid_models.data.loading import ImageSet, test_transform
    from reid_models.features import extract_features
    from reid_models.scenarios import Scenario, run_scenario
    from reid_models.stages import load_domain, pretrain, training_images

    overrides = quick_overrides(tmp_path, tiny_domains, "pretrain.model=osnet_x0_25", "pretrain.ids_per_batch=2",
                                "pretrain.epochs=1", "adapt.train.ids_per_batch=2", "adapt.cluster.min_samples=2",
                                "ship.quantize=int8_qat", "ship.qat_epochs=1", "ship.calibration_images=16")
    settings = load_settings(PARAMS, "quick", overrides)
    source = pretrain(settings, tmp_path / "pretrain")["checkpoint"]
    out = tmp_path / "run"
    run_scenario(Scenario("adapt_only", "none", 0.0, "unsupervised", 0), settings, source, out, progress=False)
    trained_on = []
    finetune = quantize.finetune
    monkeypatch.setattr(quantize, "finetune", lambda model, train_set, *a, **k: (trained_on.append(train_set),
                                                                                finetune(model, train_set, *a, **k)))
    adapted = load_model(out / "model.pt").eval()
    train = training_images(load_domain(settings.data.target, settings.data, check_images=False), settings.data,
                            settings.adapt.train.augment)
    expected = pseudo_labels(extract_features(adapted, ImageSet(train.images, train.labels, train.camids,
                                                                test_transform()), torch.device("cpu")),
                             train.camids, ClusterSettings(**settings.adapt.cluster.model_dump()))

    fields = shipping.ship_scenario(out, settings)
    assert fields["shipped_as"] == "onnx int8_qat" and 0.0 <= fields["shipped_rank1"] <= 1.0
    assert fields["shipped_size_bytes"] < fields["onnx_fp32_size_bytes"]
    [train_set] = trained_on
    assert np.array_equal(train_set.labels.numpy(), expected[expected >= 0])  # pseudo-labels, not identities


def test_int8_calibration_reads_training_images_only(pruned_checkpoint, tmp_path, monkeypatch):
    """PTQ's activation ranges come from the model's domain's training split: no query, gallery
    or validation image is ever read for calibration (nor for the export's checks)."""
    from reid_models.checkpoint import load_checkpoint
    from reid_models.config import Settings
    from reid_models.stages import load_domain

    read = []
    real_load = shipping.load_images  # what the export command reads its images with
    monkeypatch.setattr(shipping, "load_images", lambda paths, *a, **k: read.extend(paths) or real_load(paths, *a, **k))
    exported(pruned_checkpoint, tmp_path, "--quantize", "int8_ptq", "--calibration-images", "32")
    settings = Settings.model_validate(load_checkpoint(pruned_checkpoint)["settings"])
    splits = load_domain(settings.data.target, settings.data, check_images=False)
    held_out = {item[0] for part in (splits.query, splits.gallery, splits.val_query, splits.val_gallery) for item in part}
    assert len(read) >= 32 and set(read) <= {item[0] for item in splits.train}
    assert not set(read) & held_out


def test_export_int8_qat_fine_tunes_before_quantising(pruned_checkpoint, tmp_path):
    """--quantize int8_qat: the exported network is the fine-tuned one (ONNX equals *it*, not the
    checkpoint), then quantised like PTQ."""
    result = exported(pruned_checkpoint, tmp_path, "--quantize", "int8_qat", "--qat-epochs", "1",
                      "--calibration-images", "16")
    assert "model.int8.onnx" in result.output
    images = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = load_model(pruned_checkpoint).eval()(images).numpy()
    assert np.abs(onnx_features(tmp_path / "model.onnx", images) - before).max() > 1e-3  # it trained
    report = json.loads((tmp_path / "model.json").read_text())
    assert report["checks"]["model.onnx"]["real"]["max_abs_diff"] <= exporting.TOLERANCE
    assert report["checks"]["model.int8.onnx"]["real"]["min_cosine"] > 0.99
