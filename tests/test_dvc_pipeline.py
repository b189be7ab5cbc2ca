"""dvc.yaml and the flows must describe the same pipeline."""

import yaml

from flows.prune_adapt import STAGE_FLOWS
from tests.conftest import ROOT


def load_dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_dvc_stage_runs_its_flow_and_every_flow_has_a_stage():
    stages = load_dvc()
    assert set(stages) == set(STAGE_FLOWS)
    for name, stage in stages.items():
        assert stage["cmd"] == f"reid-prune stage {name}"


def test_dvc_outputs_are_what_the_flows_write():
    stages = load_dvc()
    outs = {next(iter(o)) if isinstance(o, dict) else o for s in stages.values() for o in s.get("outs", [])}
    assert outs == {"outputs/data/summary.json", "outputs/pretrain/model.pt", "outputs/pretrain/history.json",
                    "outputs/scenarios", "outputs/report/results.parquet", "outputs/report/flops_vs_rank1.png",
                    "outputs/report/summary.csv", "outputs/report/shipped.csv"}
    assert [next(iter(m)) for m in stages["report"]["metrics"]] == ["outputs/metrics.json".replace(
        "outputs/", "outputs/report/")]


def test_declared_params_exist_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in load_dvc().items():
        for key in stage.get("params", []):
            assert key.split(".")[0] in params, f"{name}: {key}"


def test_analytics_is_off_in_committed_dvc_config():
    config = (ROOT / ".dvc" / "config").read_text()
    assert "analytics = false" in config
