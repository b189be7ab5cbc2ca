"""The run's estimate: work counted in images from the settings and the data, priced by the probe."""

from __future__ import annotations

import csv

import pytest

from flows.progress import Progress
from reid_models.config import load_settings
from reid_models.estimate import SOURCE_MODEL, Speed, makespan, plan_run, thin_pretraining
from tests.conftest import PARAMS

SPEED = Speed(train=30.0, inference=120.0, render=40.0, threads=1)


def quick_settings(tmp_path, domains=None, *extra):
    paths = [f"data.source.path={domains['source']}", f"data.target.path={domains['target']}"] if domains else \
        [f"data.source.path={tmp_path / 'source'}", f"data.target.path={tmp_path / 'target'}"]
    return load_settings(PARAMS, "quick", [f"outputs={tmp_path / 'outputs'}", *paths, *extra])


def test_makespan_fills_the_first_free_worker():
    assert makespan([3, 3, 3], 1) == 9
    assert makespan([3, 3, 3], 2) == 6
    assert makespan([5, 1, 1, 1], 2) == 5


def test_unrendered_domains_are_counted_from_the_generator_plan(tiny_domains, tmp_path):
    """Counting a domain that is not on disk renders nothing, and counts what rendering will write."""
    plan = plan_run(quick_settings(tmp_path), SPEED)
    rendered = {p.name: p.render_images for p in plan.pieces if p.stage == "data"}
    for domain in ("source", "target"):
        with open(tiny_domains[domain] / "manifest.csv") as handle:
            assert rendered[f"render {domain}"] == sum(1 for _ in csv.DictReader(handle))
    assert not (tmp_path / "source").exists()
    assert not [p for p in plan_run(quick_settings(tmp_path, tiny_domains), SPEED).pieces if p.stage == "data"]


def test_scenario_pieces_follow_the_training_budget(tiny_domains, tmp_path):
    settings = quick_settings(tmp_path, tiny_domains, "scenarios.adaptation=[supervised,unsupervised]")
    pieces = {p.name: p for p in plan_run(settings, SPEED).pieces}
    grid = settings.scenarios
    budget = grid.epochs * grid.batches_per_epoch * settings.adapt.train.ids_per_batch \
        * settings.adapt.train.images_per_id
    assert pieces["source_only-none-0-none-seed0"].train_images == 0
    assert pieces["adapt_only-none-0-supervised-seed0"].train_images == budget
    assert pieces["adapt_short-none-0-supervised-seed0"].train_images == \
        budget * (grid.epochs - grid.prune_epochs) // grid.epochs
    # unsupervised adaptation also extracts the target training set once per clustering round
    assert pieces["adapt_only-none-0-unsupervised-seed0"].extract_images > \
        pieces["adapt_only-none-0-supervised-seed0"].extract_images


def test_each_shipping_choice_is_priced_and_qat_trains(tiny_domains, tmp_path):
    one = {p.name: p for p in plan_run(quick_settings(tmp_path, tiny_domains), SPEED).pieces}
    three = {p.name: p for p in plan_run(quick_settings(tmp_path, tiny_domains, "ship.quantize=[int8_ptq,none,int8_qat]"),
                                         SPEED).pieces}
    key = "adapt_only-none-0-supervised-seed0"
    assert three[key].extract_images > one[key].extract_images  # two more exports, checks and scorings
    assert three[key].train_images > one[key].train_images       # quantisation-aware fine-tuning


def test_finished_pieces_are_not_priced_again(tiny_domains, tmp_path):
    settings = quick_settings(tmp_path, tiny_domains)
    full = plan_run(settings, SPEED)
    key = full.scenario_keys[1]
    rest = plan_run(settings, SPEED, {SOURCE_MODEL, key, thin_pretraining(0.5)})
    names = {p.name for p in rest.pieces}
    assert SOURCE_MODEL not in names and key not in names and thin_pretraining(0.5) not in names
    assert rest.skipped == [key] and rest.total_seconds() < full.total_seconds()
    assert plan_run(settings, Speed(60.0, 240.0, 80.0, 1)).total_seconds() == pytest.approx(full.total_seconds() / 2)


def test_progress_counts_scenarios_and_the_time_left_shrinks(tiny_domains, tmp_path):
    plan = plan_run(quick_settings(tmp_path, tiny_domains), SPEED)
    progress = Progress(plan)
    before = progress.remaining_seconds()
    progress.start_stage("scenarios")
    progress.finished(SOURCE_MODEL)
    progress.finished(plan.scenario_keys[0])
    progress.finished("not a piece of this run")
    line = progress.line()
    assert f"stage 3/4 (scenarios), scenario 1/{len(plan.scenario_keys)} done" in line
    assert progress.remaining_seconds() < before


def test_the_thin_network_is_priced_beside_the_source_model_with_a_free_worker(tiny_domains, tmp_path):
    """With two workers the pretrain stage takes the longer of the two trainings, not their sum;
    with one, the thin network waits for a worker in the grid."""
    two = plan_run(quick_settings(tmp_path, tiny_domains, "orchestration.workers=2",
                                  "orchestration.torch_threads=1"), SPEED)
    stages = {p.name: p.stage for p in two.pieces}
    assert stages[SOURCE_MODEL] == stages[thin_pretraining(0.5)] == "pretrain"
    durations = {p.name: p.seconds(SPEED) for p in two.pieces if p.stage == "pretrain"}
    assert two.stage_seconds("pretrain") == pytest.approx(max(durations.values()))
    one = plan_run(quick_settings(tmp_path, tiny_domains), SPEED)  # the quick profile: one worker
    assert {p.name: p.stage for p in one.pieces}[thin_pretraining(0.5)] == "scenarios"
    assert one.stage_seconds("pretrain") == pytest.approx(durations[SOURCE_MODEL])
