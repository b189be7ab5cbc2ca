import pytest

from reid_models.config import SettingsError, load_settings, tracking_uri
from reid_models.models import BACKBONES
from tests.conftest import PARAMS


def test_default_and_quick_profiles_load():
    default = load_settings(PARAMS)
    quick = load_settings(PARAMS, profile="quick")
    assert default.profile == "default" and quick.profile == "quick"
    assert quick.pretrain.epochs < default.pretrain.epochs
    assert quick.data.source.path != default.data.source.path


def test_the_default_grid_still_answers_the_question_at_a_smaller_scale_than_full():
    """The everyday default is smaller than the benchmarks' `full` profile, but still compares
    the unpruned adapted model, every pruning stage and the thin dense network (with target labels;
    full adds the label-free mode); the two never share outputs or data (a full run stays valid)."""
    from reid_models.scenarios import expand_grid

    default, full = load_settings(PARAMS), load_settings(PARAMS, profile="full")
    names = {s.name for s in expand_grid(default)}
    assert {"source_only", "adapt_only", "prune_before", "prune_during", "prune_after", "small_dense"} <= names
    assert "supervised" in {s.adaptation for s in expand_grid(default)}
    assert {s.adaptation for s in expand_grid(full)} >= {"supervised", "unsupervised"}
    assert len(expand_grid(default)) < len(expand_grid(full))
    assert default.pretrain.epochs < full.pretrain.epochs
    assert default.scenarios.batches_per_epoch < full.scenarios.batches_per_epoch
    assert default.data.synth.test_ids < full.data.synth.test_ids
    assert default.outputs != full.outputs and default.data.source.path != full.data.source.path


def test_override_changes_one_key_and_parses_types():
    settings = load_settings(PARAMS, overrides=["pretrain.epochs=7", "data.skip_corrupt=true"])
    assert settings.pretrain.epochs == 7
    assert settings.data.skip_corrupt is True
    assert settings.pretrain.lr == load_settings(PARAMS).pretrain.lr


@pytest.mark.parametrize(
    "override, words",
    [
        ("pretrain.epochs=-1", ["pretrain.epochs", "-1", "greater than or equal to 1"]),
        ("data.height=100", ["data.height", "100", "multiple of 8"]),
        ("pretrain.model=resnet9000", ["pretrain.model", "resnet9000", "resnet18"]),
        ("data.source.kind=imagenet", ["data.source.kind", "imagenet", "market1501"]),
        ("pretrain.label_smoothing=1.5", ["pretrain.label_smoothing", "1.5"]),
        ("pretrain.epochs=many", ["pretrain.epochs", "many", "integer"]),
        ("pretrain.epochz=3", ["pretrain.epochz", "unknown key"]),
        ("ship.quantize=[none,none]", ["ship.quantize", "at most once"]),
        ("ship.quantize=[int4]", ["ship.quantize", "int4", "int8_ptq"]),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(override, words):
    with pytest.raises(SettingsError) as error:
        load_settings(PARAMS, overrides=[override])
    message = str(error.value)
    assert "params.yaml" in message
    for word in words:
        assert word in message


def test_ship_quantize_takes_one_choice_or_several():
    assert load_settings(PARAMS, overrides=["ship.quantize=int8_qat"]).ship.quantize == ["int8_qat"]
    assert load_settings(PARAMS, overrides=["ship.quantize=[int8_ptq,none]"]).ship.quantize == ["int8_ptq", "none"]


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(SettingsError, match="quick"):
        load_settings(PARAMS, profile="huge")


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(SettingsError, match="KEY.PATH=VALUE"):
        load_settings(PARAMS, overrides=["pretrain.epochs"])


def test_model_names_in_config_match_the_model_registry():
    from typing import get_args

    from reid_models.config import ModelName

    assert set(get_args(ModelName)) == set(BACKBONES)


def test_tracking_uri_is_made_absolute(tmp_path):
    settings = load_settings(PARAMS)
    uri = tracking_uri(settings.tracking, root=tmp_path)
    assert uri == f"sqlite:///{(tmp_path / 'mlruns.db').resolve()}"
    assert uri.startswith("sqlite:////")
