"""bench.shapes: every variant is valid settings that change only what it names."""

from pathlib import Path

from bench.scenarios import settings_for_seed
from bench.shapes import PLAN, VARIANTS

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")


def test_variants_change_only_the_shape_settings_they_name():
    default = settings_for_seed(PARAMS, "quick", [], 0).prune
    for name, overrides in VARIANTS.items():
        changed = settings_for_seed(PARAMS, "quick", overrides, 0).prune
        differing = {key for key, value in default.model_dump().items() if changed.model_dump()[key] != value}
        assert differing == {override.split("=")[0].removeprefix("prune.") for override in overrides}, name


def test_every_comparison_is_against_a_run_of_the_plan():
    labels = {run.label for run in PLAN}
    assert all(run.versus in labels for run in PLAN if run.versus)
    assert {run.variant for run in PLAN} == set(VARIANTS)
