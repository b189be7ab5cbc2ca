"""`pretrain.init`: starting weights from a local file, mapped onto the backbone by key name."""

import json

import pytest
import torch

from reid_models.checkpoint import CheckpointError
from reid_models.config import SettingsError, load_settings
from reid_models.models import ReIDNet, load_backbone_weights
from tests.conftest import PARAMS, write_csv_domain


def randomised(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Every float tensor (BatchNorm statistics included) replaced by random values, so that
    equality after loading proves the values came from the file, not from a shared default."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(value.shape, generator=generator) if value.is_floating_point() else value + 7
            for key, value in state.items()}


def assert_backbone_holds(model: ReIDNet, expected: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    assert set(own) == set(expected)
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


def test_torchvision_imagenet_state_dict_loads_every_backbone_weight(tmp_path):
    import torchvision

    state = randomised(torchvision.models.resnet18().state_dict())
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(state, path)
    model = ReIDNet("resnet18", num_classes=10)

    report = load_backbone_weights(model, path)

    backbone_keys = set(model.backbone.state_dict())
    assert set(report.matched) == backbone_keys and len(backbone_keys) > 100
    assert {"conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight", "layer4.1.bn2.weight"} <= backbone_keys
    assert report.missing == [] and report.shape_mismatched == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]  # ImageNet's head: our BNNeck replaces it
    assert report.matched_share == 1.0
    assert_backbone_holds(model, {key: state[key] for key in backbone_keys})
    summary = report.as_dict()
    assert summary["matched"] == len(backbone_keys) and summary["unexpected"] == 2
    assert summary["examples"]["unexpected"] == ["fc.weight", "fc.bias"]


def test_torchreid_checkpoint_with_module_prefixes_loads(tmp_path):
    from torchreid.reid.models import build_model

    state = randomised(build_model("resnet18", num_classes=751, pretrained=False).state_dict(), seed=1)
    path = tmp_path / "model.pth.tar-60"
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}, "epoch": 60, "rank1": 0.8},
               path)
    model = ReIDNet("resnet18", num_classes=10)

    report = load_backbone_weights(model, path)

    assert report.missing == [] and report.shape_mismatched == []
    assert sorted(report.unexpected) == ["module.classifier.bias", "module.classifier.weight"]
    assert_backbone_holds(model, {key: state[key] for key in model.backbone.state_dict()})


def test_a_reid_prune_model_checkpoint_loads_its_backbone(tmp_path):
    source = ReIDNet("resnet18", num_classes=5)
    expected = randomised(source.backbone.state_dict(), seed=4)
    source.backbone.load_state_dict(expected)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": source.state_dict(), "model": "resnet18", "num_classes": 5}, path)
    model = ReIDNet("resnet18", num_classes=7)

    report = load_backbone_weights(model, path)

    assert report.missing == [] and {key.split(".")[0] for key in report.unexpected} == {"neck", "classifier"}
    assert_backbone_holds(model, expected)


def test_keys_the_file_lacks_keep_their_init_and_are_reported(tmp_path):
    import torchvision

    state = randomised(torchvision.models.resnet18().state_dict(), seed=2)
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[key]  # files saved before PyTorch 0.4.1 have no such buffers
    path = tmp_path / "old.pth"
    torch.save(state, path)
    model = ReIDNet("resnet18", num_classes=10)

    report = load_backbone_weights(model, path)

    assert len(report.missing) == 20 and all(k.endswith("num_batches_tracked") for k in report.missing)
    assert report.matched_share == 1.0 and report.shape_mismatched == []
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert int(model.backbone.bn1.num_batches_tracked) == 0


def test_one_weight_of_another_shape_refuses_the_file_and_names_the_key(tmp_path):
    import torchvision

    state = randomised(torchvision.models.resnet18().state_dict(), seed=2)
    state["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    model = ReIDNet("resnet18", num_classes=10)
    untouched = {key: value.clone() for key, value in model.backbone.state_dict().items()}

    with pytest.raises(CheckpointError, match=r"1 weights have another shape .*layer4\.1\.conv2\.weight: file "
                                              r"\(512, 512, 1, 1\) vs model \(512, 512, 3, 3\)"):
        load_backbone_weights(model, path)
    assert_backbone_holds(model, untouched)


@pytest.mark.parametrize("content", ["resnet50", "random_dict"])
def test_a_file_for_another_network_is_refused_naming_the_file(tmp_path, content):
    import torchvision

    if content == "resnet50":  # same layer names, other shapes: only a few convs would fit
        state = torchvision.models.resnet50().state_dict()
    else:
        state = {"encoder.weight": torch.randn(8, 8), "decoder.bias": torch.randn(8)}
    path = tmp_path / f"{content}.pth"
    torch.save(state, path)
    model = ReIDNet("resnet18", num_classes=10)
    untouched = {key: value.clone() for key, value in model.backbone.state_dict().items()}

    with pytest.raises(CheckpointError, match=rf"{path}.*does not fit resnet18.*pretrain.init: null"):
        load_backbone_weights(model, path)
    assert_backbone_holds(model, untouched)  # nothing half-loaded


def test_unreadable_files_and_non_state_dicts_are_refused_naming_the_file(tmp_path):
    model = ReIDNet("resnet18", num_classes=10)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=rf"not a PyTorch checkpoint: {garbage} \(pretrain.init weights file"):
        load_backbone_weights(model, garbage)
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match=rf"{listed} holds a list with no tensors, not a state_dict"):
        load_backbone_weights(model, listed)


def test_a_missing_init_file_fails_before_data_is_read_or_anything_is_written(tmp_path):
    from reid_models import stages

    missing = tmp_path / "no_such_weights.pth"
    settings = load_settings(PARAMS, "quick", [f"pretrain.init={missing}", f"outputs={tmp_path / 'out'}",
                                               "data.source.kind=csv", f"data.source.path={tmp_path / 'nowhere.csv'}",
                                               "device=cpu"])
    # The source data does not exist either: the init error must come first, before any data or training.
    with pytest.raises(CheckpointError, match=rf"{missing} not found.*nothing is downloaded"):
        stages.pretrain(settings, tmp_path / "out" / "pretrain")
    assert not (tmp_path / "out").exists()


def test_with_init_the_effective_recipe_takes_the_init_recipe_fields():
    base = ["pretrain.optimizer=sgd", "pretrain.lr=0.05", "pretrain.warmup_epochs=5", "pretrain.weight_decay=0.001",
            "pretrain.init_recipe.lr=0.000123", "pretrain.init_recipe.warmup_epochs=3"]
    plain = load_settings(PARAMS, overrides=base).pretrain
    assert plain.effective_recipe() == plain  # no init: the recipe as written
    assert (plain.optimizer, plain.lr, plain.warmup_epochs) == ("sgd", 0.05, 5)

    tuned = load_settings(PARAMS, overrides=[*base, "pretrain.init=weights.pth"]).pretrain.effective_recipe()
    assert (tuned.optimizer, tuned.lr, tuned.warmup_epochs, tuned.weight_decay) == ("adam", 0.000123, 3, 0.0005)
    assert tuned.epochs == plain.epochs and tuned.augment == plain.augment  # the rest is unchanged

    defaults = load_settings(PARAMS, overrides=["pretrain.init=weights.pth"]).pretrain.init_recipe
    assert (defaults.optimizer, defaults.lr, defaults.warmup_epochs) == ("adam", 3.5e-4, 2)  # BoT's fine-tuning


def test_init_recipe_is_validated_with_its_key_path():
    with pytest.raises(SettingsError, match=r"init_recipe.warmup_epochs \(6\) must be < epochs \(4\)"):
        load_settings(PARAMS, overrides=["pretrain.init=w.pth", "pretrain.epochs=4", "pretrain.warmup_epochs=1",
                                         "pretrain.init_recipe.warmup_epochs=6"])
    with pytest.raises(SettingsError, match=r"pretrain.init_recipe.lr"):
        load_settings(PARAMS, overrides=["pretrain.init_recipe.lr=-1"])
    with pytest.raises(SettingsError, match=r"pretrain.init = '': empty path"):
        load_settings(PARAMS, overrides=["pretrain.init=''"])


def test_pretrain_starts_from_the_file_with_the_init_recipe_and_saves_the_report(tmp_path, monkeypatch):
    """stages.pretrain end to end with training stubbed: what training receives is what counts."""
    import torchvision

    from reid_models import stages

    state = randomised(torchvision.models.resnet18().state_dict(), seed=3)
    weights = tmp_path / "imagenet.pth"
    torch.save(state, weights)
    manifest = write_csv_domain(tmp_path / "data", ids=8, images_per_camera=2)
    settings = load_settings(PARAMS, "quick", [
        f"pretrain.init={weights}", "pretrain.init_recipe.lr=0.000777", "pretrain.lr=0.01", "pretrain.epochs=3",
        "data.source.kind=csv", f"data.source.path={manifest}", f"outputs={tmp_path / 'out'}", "device=cpu"])
    seen = {}

    def fake_train(model, images, recipe, device, **kwargs):
        seen["recipe"], seen["backbone"] = recipe, {k: v.clone() for k, v in model.backbone.state_dict().items()}
        seen["classes"] = model.classifier.out_features
        return [{"epoch": 1, "loss": 1.0}]

    monkeypatch.setattr(stages, "train_model", fake_train)
    out_dir = tmp_path / "out" / "pretrain"
    result = stages.pretrain(settings, out_dir)

    assert seen["recipe"].lr == 0.000777 and seen["recipe"].epochs == 3
    assert seen["classes"] == result["train_ids"] > 1  # the head is sized to the data, not to the file
    for key, value in seen["backbone"].items():
        assert torch.equal(value, state[key]), key
    saved = json.loads((out_dir / "init_report.json").read_text())
    assert saved == result["init_report"]
    assert saved["path"] == str(weights) and saved["missing"] == 0 and saved["unexpected"] == 2
    assert saved["matched"] == len(seen["backbone"]) and saved["shape_mismatched"] == 0
