"""Recovery of pruned networks: distillation, BatchNorm recalibration, the gradual removal schedule."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from reid_models.complexity import count_flops, count_params
from reid_models.config import PruneSettings
from reid_models.data.loading import ImageSet, test_transform
from reid_models.models import ReIDNet
from reid_models.pruning.criteria import build_criterion
from reid_models.pruning.prune import prune_model
from reid_models.pruning.recovery import (Teacher, distillation_terms, ramp_share, recalibrate_batchnorm,
                                          removal_epochs)
from reid_models.train import train_model

H, W = 64, 32
CPU = torch.device("cpu")


def tiny_set(ids: int = 6, per_id: int = 4, seed: int = 0) -> ImageSet:
    """Random images, a few per identity, with an identity-specific colour so there is something to learn."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(ids).repeat_interleave(per_id)
    colour = torch.randint(0, 255, (ids, 3, 1, 1), generator=generator)
    noise = torch.randint(0, 60, (len(labels), 3, H, W), generator=generator)
    images = (colour[labels] * 0.7 + noise).clamp(0, 255).to(torch.uint8)
    return ImageSet(images, labels, labels % 2, test_transform())


def tiny_settings(**changes) -> PruneSettings:
    finetune = PruneSettings().finetune.model_copy(update={"ids_per_batch": 3, "images_per_id": 4,
                                                           "batches_per_epoch": 2, "epochs": 4})
    return PruneSettings(finetune=finetune, bn_recalibration_batches=2, **changes)


def test_distillation_is_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    student = ReIDNet("resnet18", 4).eval()
    teacher = Teacher(student, PruneSettings())
    images = torch.randn(8, 3, H, W)
    terms = teacher.loss(images, student.pooled_features(images))
    assert terms["distill"].item() == pytest.approx(0.0, abs=1e-5)
    other = distillation_terms(torch.randn(8, 16), torch.randn(8, 16), 0.1)
    assert other["distill_feature"] > 0.1 and other["distill_relation"] > 0.01


def test_distillation_falls_during_a_short_run():
    """A pruned student trained with its unpruned teacher gets closer to it, epoch by epoch."""
    torch.manual_seed(0)
    data = tiny_set()
    teacher_model = ReIDNet("resnet18", 6)
    train_model(teacher_model, data, tiny_settings().finetune.model_copy(update={"epochs": 2}), CPU, progress=False)
    student = copy.deepcopy(teacher_model)
    prune_model(student, build_criterion("l1"), tiny_settings(mode="oneshot"), None, CPU, H, W)
    teacher = Teacher(teacher_model, tiny_settings(distill_relation_weight=0.0))
    recipe = tiny_settings().finetune.model_copy(update={"epochs": 4, "lr": 1e-3, "triplet_weight": 0.0,
                                                         "label_smoothing": 0.0})
    history = train_model(student, data, recipe, CPU, teacher=teacher, progress=False)
    assert history[-1]["distill"] < history[0]["distill"]
    assert all("distill_feature" in record for record in history)


def test_batchnorm_recalibration_changes_statistics_not_weights():
    torch.manual_seed(0)
    model = ReIDNet("resnet18", 6)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    before = model.backbone.bn1.running_mean.clone()
    momentum = model.backbone.bn1.momentum
    used = recalibrate_batchnorm(model.eval(), tiny_set(), 2, 3, 4, 0, CPU)
    assert used == 24
    assert not torch.allclose(model.backbone.bn1.running_mean, before)
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    assert model.backbone.bn1.momentum == momentum and not model.training  # restored


@pytest.mark.parametrize("shape", ["cubic", "linear"])
def test_ramp_rises_to_exactly_the_budget(shape):
    shares = [ramp_share(e, 3, 0.7, shape) for e in range(3)]
    assert shares == sorted(shares) and shares[0] > 0
    assert shares[-1] == 0.7
    assert removal_epochs(6, 0.5) == 3 and removal_epochs(3, 0.5) == 2 and removal_epochs(4, 1.0) == 4


def test_network_trains_in_its_final_shape_after_the_removal_point():
    """remove_at 0.5 of 4 epochs: epochs 1-2 at full size (soft ramp), 3-4 in the pruned shape;
    the budget is met exactly by the physical network; the teacher is the unpruned model."""
    torch.manual_seed(0)
    model = ReIDNet("resnet18", 6)
    full = count_params(model)
    sizes: list[int] = []
    settings = tiny_settings(schedule="gradual", distill=True, remove_at=0.5)
    report = prune_model(model, build_criterion("l2"), settings, tiny_set(), CPU, H, W,
                         on_epoch=lambda record: sizes.append(count_params(model)), progress=False)
    assert sizes[:2] == [full, full] and sizes[2] == sizes[3] < full
    assert len(report.history) == 4 and abs(report.measured_reduction - 0.5) <= 0.02
    assert count_flops(model, H, W) == report.flops_after
    assert report.teacher != "none" and report.recalibration_images == 24
    assert report.train_gflops > 0 and "distill" in report.history[-1]


def test_legacy_schedule_removes_only_after_the_last_epoch():
    torch.manual_seed(0)
    model = ReIDNet("resnet18", 6)
    full = count_params(model)
    sizes: list[int] = []
    prune_model(model, build_criterion("l2"), tiny_settings(schedule="legacy", distill=False), tiny_set(), CPU, H,
                W, on_epoch=lambda record: sizes.append(count_params(model)), progress=False)
    assert sizes == [full] * 4 and count_params(model) < full


def test_mean_teacher_follows_until_the_student_is_pruned():
    torch.manual_seed(0)
    student = ReIDNet("resnet18", 6)
    teacher = Teacher(student, PruneSettings(), momentum=0.5)
    with torch.no_grad():
        student.backbone.conv1.weight.add_(1.0)
    teacher.follow(student)
    assert torch.allclose(teacher.model.backbone.conv1.weight, student.backbone.conv1.weight - 0.5)
    prune_model(student, build_criterion("l1"), PruneSettings(mode="oneshot"), None, CPU, H, W)
    kept = teacher.model.backbone.conv1.weight.clone()
    teacher.follow(student)
    assert teacher.momentum == 0.0 and torch.equal(teacher.model.backbone.conv1.weight, kept)


def test_prune_during_resumed_after_the_removal_keeps_its_teacher_and_pruned_shape(tiny_domains, tmp_path,
                                                                                  monkeypatch):
    """Killed between removal and recovery, a re-run starts the recovery from the saved small
    model with the same teacher; the final model has the pruned shapes."""
    from reid_models import scenarios
    from reid_models.checkpoint import load_checkpoint
    from reid_models.config import load_settings
    from reid_models.stages import model_from_payload, pretrain
    from tests.conftest import PARAMS, quick_overrides

    overrides = quick_overrides(tmp_path, tiny_domains, "pretrain.model=osnet_x0_25", "pretrain.ids_per_batch=2",
                                "pretrain.epochs=1", "prune.finetune.ids_per_batch=2", "adapt.train.ids_per_batch=2",
                                "scenarios.epochs=4", "prune.schedule=gradual", "prune.distill=true",
                                "prune.bn_recalibration_batches=40")
    settings = load_settings(PARAMS, "quick", overrides)
    source = pretrain(settings, tmp_path / "pretrain")["checkpoint"]
    scenario = scenarios.Scenario("prune_during", "l2", 0.5, "supervised", 0)
    out = tmp_path / "run"
    train_on_target = scenarios.ScenarioRun.train_on_target

    def crash_in_recovery(self, name, *args, **kwargs):
        if name == "recover_target":
            raise RuntimeError("killed after the removal")
        return train_on_target(self, name, *args, **kwargs)

    monkeypatch.setattr(scenarios.ScenarioRun, "train_on_target", crash_in_recovery)
    with pytest.raises(RuntimeError):
        scenarios.run_scenario(scenario, settings, source, out, progress=False)
    removed = load_checkpoint(out / "step1_prune_target" / "model.pt")
    assert removed["info"]["recalibration_images"] > 0
    monkeypatch.undo()

    row = scenarios.run_scenario(scenario, settings, source, out, progress=False)
    steps = json.loads((out / "steps.json").read_text())
    assert [s["name"] for s in steps] == ["prune_target", "recover_target"] and [s["epochs"] for s in steps] == [2, 2]
    assert steps[0]["teacher"] == steps[1]["teacher"] and steps[1]["teacher"].startswith("mean teacher")
    final = model_from_payload(load_checkpoint(out / "model.pt"), "final")
    small = model_from_payload(removed, "removed")
    assert [p.shape for p in final.backbone.parameters()] == [p.shape for p in small.backbone.parameters()]
    full = count_flops(ReIDNet("osnet_x0_25", 2), settings.data.height, settings.data.width)
    assert abs(1 - row["flops"] / full - 0.5) <= 0.02
