"""The MLflow UI as the user opens it (headless Chromium): the link the run prints lands on the
runs, lists the scenario runs and draws the FLOPs-vs-rank-1 scatter without a click."""

from __future__ import annotations

import pytest

from flows.ui_snapshot import browser, mlflow_ui, snapshot
from reid_models.config import load_settings, tracking_uri
from tasks.tracking import FLOPS_VS_RANK1_VIEW, client_for, tracked_run, ui_url
from tests.conftest import PARAMS

pytestmark = pytest.mark.skipif(browser() is None, reason="needs Chromium (Debian package chromium)")

SCENARIOS = {"adapt_only-none-0-supervised-seed0": (0.59, 0.77), "prune_during-plfp-0.5-supervised-seed0": (0.30, 0.67),
             "small_dense-none-0.5-supervised-seed0": (0.30, 0.69)}


def test_the_printed_link_shows_the_scenario_runs_and_the_scatter(tmp_path):
    settings = load_settings(PARAMS, "quick", [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                               f"tracking.artifact_root={tmp_path / 'artifacts'}"])
    with tracked_run(settings, "prune-adapt-quick") as parent:  # the runs a finished grid leaves
        for key, (gflops, rank1) in SCENARIOS.items():
            name, criterion, reduction, adaptation, _ = key.split("-")
            with tracked_run(settings, key, parent_run_id=parent.run_id) as child:
                child.params({"scenario": name, "criterion": criterion, "flops_reduction": reduction,
                              "adaptation": adaptation})
                child.metrics({"gflops": gflops, "rank1": rank1})
    client, experiment_id = client_for(settings)
    assert f"mlflow.sharedViewState.{FLOPS_VS_RANK1_VIEW}" in client.get_experiment(experiment_id).tags

    with mlflow_ui(tracking_uri(settings.tracking)) as base:
        url = ui_url(settings, base)
        dom = snapshot(url, tmp_path / "ui.png")
    assert "/runs?workflowType=machine_learning" in url  # not the GenAI overview
    for key in SCENARIOS:
        assert key in dom, f"{key} is not listed"
    assert "gflops vs. rank1" in dom  # the scatter's title: drawn without a click
    assert (tmp_path / "ui.png").stat().st_size > 10_000
