import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from reid_models.checkpoint import CheckpointError
from reid_models.complexity import count_flops, count_params, fold_batchnorm
from reid_models.config import PruneSettings
from reid_models.models import ReIDNet
from reid_models.pruning.budget import allocate
from reid_models.pruning.criteria import CRITERIA, FPGM, PLFP, build_criterion
from reid_models.pruning.graph import ChannelGraph, FilterGroup
from reid_models.pruning.prune import prune_model
from reid_models.pruning.spec import architecture_spec, build_from_spec, load_into
from reid_models.train import reid_loss

H, W = 64, 32  # small inputs keep the tests fast; shapes do not depend on them


def trained_looking(name: str) -> ReIDNet:
    """Random weights with non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(0)
    model = ReIDNet(name, num_classes=7)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(module.weight, 1.0, 0.2)
            nn.init.normal_(module.bias, 0.0, 0.2)
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "osnet_x0_25", "mobilenetv2_x1_0"])
def test_removal_is_exact_and_keeps_the_embedding(name):
    model = trained_looking(name)
    graph = ChannelGraph(model, H, W)
    selection = {g.name: list(range(0, g.channels, 3)) for g in graph.filter_groups()}
    images = torch.randn(2, 3, H, W)
    graph.scale_channels(selection, 0.0)  # masked: same shape, selected channels silent
    with torch.no_grad():
        masked = model(images)
    params_before = count_params(model)
    graph.remove_channels(selection)
    with torch.no_grad():
        pruned = model(images)
    assert pruned.shape == masked.shape == (2, model.neck.num_features)
    assert (pruned - masked).abs().max() < 1e-4
    assert count_params(model) < params_before


def test_embedding_is_pruned_only_when_asked():
    fixed = ChannelGraph(trained_looking("resnet18"), H, W)
    free = ChannelGraph(trained_looking("resnet18"), H, W, prune_embedding=True)
    assert len(free.groups) == len(fixed.groups) + 1  # the last stage's residual group
    model = free.model
    embedding_group = (set(free.groups) - set(fixed.groups)).pop()
    free.remove_channels({embedding_group: [0, 1, 2]})
    assert model.neck.num_features == 509 and model.classifier.in_features == 509
    assert model.classifier.out_features == 7  # the classifier's identities are never pruned


def test_plfp_removes_filters_that_neighbours_can_replace():
    torch.manual_seed(0)
    isolated = torch.eye(4) * 10  # far from everything
    cluster = torch.zeros(3, 4) + torch.randn(3, 4) * 0.01  # three near-duplicates
    group = FilterGroup("conv", torch.cat([isolated, cluster]))
    chosen = PLFP(k=1).select(group, 2)
    assert set(chosen) <= {4, 5, 6} and len(chosen) == 2
    # L1 would remove the same small filters here; on equal norms only PLFP sees redundancy.
    ring = torch.tensor([[1.0, 0], [0.999, 0.04], [0, 1.0], [-1.0, 0], [0, -1.0]])
    assert set(PLFP(k=1).select(FilterGroup("ring", ring), 1)) <= {0, 1}


def redundant_large_cluster(k: int, quota: int) -> tuple[FilterGroup, set[int]]:
    """A group where only a *local* criterion finds the redundant filters: k + quota near-copies
    of one large filter (any of them can stand in for the others) far from a bulk of small,
    spread-out filters. Norms keep the copies (they are the largest) and the summed distance to
    all filters keeps them too (they are far from the bulk, where FPGM's median lies)."""
    generator = torch.Generator().manual_seed(0)
    dims = 27  # a 3x3 conv over 3 channels
    bulk = 0.5 * torch.randn(12, dims, generator=generator)  # pairwise ~4 apart, norms ~2.6
    direction = torch.nn.functional.normalize(torch.randn(dims, generator=generator), dim=0)
    copies = 10 * direction + 0.01 * torch.randn(k + quota, dims, generator=generator)
    filters = torch.cat([bulk[:5], copies, bulk[5:]])  # the copies are not first or last
    return FilterGroup("conv", filters), set(range(5, 5 + k + quota))


@pytest.mark.parametrize("wrong", ["l1", "l2", "fpgm"])
def test_plfp_choice_is_local_and_differs_from_norms_and_the_geometric_median(wrong):
    """PLFP removes near-copies even when they are large and far from the rest: the choice
    no norm or global criterion makes, so the test fails if one of them stands in for PLFP."""
    k, quota = PruneSettings().plfp_k, 2
    group, copies = redundant_large_cluster(k, quota)

    def removes_copies(criterion) -> bool:
        chosen = criterion.select(group, quota)
        return len(chosen) == quota and set(chosen) <= copies

    assert removes_copies(build_criterion("plfp", plfp_k=k))
    assert not removes_copies(build_criterion(wrong, plfp_k=k))
    assert not set(build_criterion(wrong, plfp_k=k).select(group, quota)) & copies  # it keeps every copy


def test_plfp_falls_back_to_the_global_rule_when_k_covers_every_filter():
    torch.manual_seed(1)
    group = FilterGroup("conv", torch.randn(6, 5))
    assert PLFP(k=10).select(group, 1) == FPGM().select(group, 1)


def test_registry_lists_valid_names_and_config_agrees():
    from typing import get_args

    from reid_models.config import CriterionName

    assert set(get_args(CriterionName)) == set(CRITERIA)
    with pytest.raises(ValueError, match="plfp, l1, l2, fpgm, taylor, random"):
        build_criterion("magnitude")


def test_taylor_needs_data():
    model = trained_looking("resnet18")
    settings = PruneSettings(criterion="taylor", mode="oneshot")
    with pytest.raises(ValueError, match="taylor criterion needs training data"):
        prune_model(model, build_criterion("taylor"), settings, None, torch.device("cpu"), H, W)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_budget_lands_within_two_points_of_the_target(allocation, target):
    model = trained_looking("resnet18")
    groups = ChannelGraph(model, H, W).filter_groups()
    counts = allocate(model, groups, build_criterion("l1"), target, H, W, allocation=allocation)
    pruned = copy.deepcopy(model)
    ChannelGraph(pruned, H, W).remove_channels({name: list(range(n)) for name, n in counts.items()})
    reduction = 1 - count_flops(pruned, H, W) / count_flops(model, H, W)
    assert abs(reduction - target) <= 0.02
    sizes = {g.name: g.channels for g in groups}
    assert all(n <= 0.95 * sizes[name] for name, n in counts.items())


def test_channel_rounding_keeps_multiples():
    model = trained_looking("resnet18")
    groups = ChannelGraph(model, H, W).filter_groups()
    counts = allocate(model, groups, build_criterion("l2"), 0.5, H, W, multiple=8)
    assert all((g.channels - counts[g.name]) % 8 == 0 for g in groups)


def test_oneshot_prune_without_finetune_hits_budget():
    model = trained_looking("osnet_x0_25")
    report = prune_model(model, build_criterion("fpgm"), PruneSettings(mode="oneshot", flops_reduction=0.4), None,
                         torch.device("cpu"), H, W)
    assert abs(report.measured_reduction - 0.4) <= 0.02
    assert report.params_after < report.params_before
    assert count_flops(model, H, W) == report.flops_after


def test_spec_rebuilds_the_pruned_network_and_rejects_a_wrong_one():
    model = trained_looking("resnet18")
    prune_model(model, build_criterion("l1"), PruneSettings(mode="oneshot", flops_reduction=0.5), None,
                torch.device("cpu"), H, W)
    spec = architecture_spec(model)
    rebuilt = build_from_spec(spec)
    load_into(rebuilt, model.state_dict(), "test")
    images = torch.randn(2, 3, H, W)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(images), model(images), atol=1e-6)

    wrong = copy.deepcopy(spec)
    wrong["layers"]["backbone.layer2.0.conv1"]["out_channels"] += 1
    with pytest.raises(CheckpointError, match="backbone.layer2.0.conv1"):
        load_into(build_from_spec(wrong), model.state_dict(), "test")
    with pytest.raises(CheckpointError, match="expects"):
        load_into(ReIDNet("resnet18", 7), model.state_dict(), "test")


def test_folding_batchnorm_keeps_features():
    model = trained_looking("resnet18").eval()
    images = torch.randn(3, 3, H, W)
    folded = fold_batchnorm(model, H, W)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())  # the original is kept
    with torch.no_grad():
        assert (folded(images) - model(images)).abs().max() < 1e-4


def test_folding_batchnorm_leaves_a_model_running_in_another_thread_alone():
    """Scenarios run side by side on threads; measuring one (which folds its BatchNorms) must not
    disturb another one's forward passes, as torch.fx's tracer does."""
    import threading

    measured, busy = trained_looking("resnet18"), ReIDNet("resnet18", 5).eval()
    running, stop, failures = threading.Event(), threading.Event(), []

    def keep_running():
        images = torch.randn(2, 3, H, W)
        while not stop.is_set():
            try:
                with torch.no_grad():
                    busy(images)
            except Exception as error:  # noqa: BLE001 - whatever breaks is the finding
                failures.append(error)
                return
            running.set()

    other = threading.Thread(target=keep_running)
    other.start()
    try:
        assert running.wait(timeout=60)
        for _ in range(10):
            fold_batchnorm(measured, H, W)
    finally:
        stop.set()
        other.join()
    assert failures == []


def test_progressive_pruning_stage_on_tiny_data(tiny_domains, tmp_path):
    """Pretrain briefly, prune progressively with fine-tuning, reload the pruned checkpoint."""
    from reid_models import stages
    from reid_models.config import load_settings
    from tests.conftest import PARAMS, quick_overrides

    tiny = ("pretrain.epochs=1", "pretrain.warmup_epochs=0", "pretrain.ids_per_batch=2",
            "prune.finetune.ids_per_batch=2", "prune.finetune.epochs=2", "prune.flops_reduction=0.5",
            "data.height=64", "data.width=32")
    settings = load_settings(PARAMS, "quick", quick_overrides(tmp_path, tiny_domains, *tiny))
    pretrained = stages.pretrain(settings, tmp_path / "pretrain")["checkpoint"]

    # A finished source model is reused byte for byte, even under settings it does not depend on:
    # scenarios fingerprint its bytes, so a rewrite would re-run every one of them.
    saved = Path(pretrained).read_bytes()
    other = load_settings(PARAMS, "quick", quick_overrides(tmp_path, tiny_domains, *tiny, "orchestration.workers=2"))
    assert stages.pretrain(other, tmp_path / "pretrain")["checkpoint"] == pretrained
    assert Path(pretrained).read_bytes() == saved

    result = stages.prune(settings, pretrained, tmp_path / "prune")
    report = result["report"]
    assert report["mode"] == "progressive" and len(report["history"]) == 2
    assert abs(report["measured_reduction"] - 0.5) <= 0.02
    pruned = stages.load_model(result["checkpoint"])
    assert count_flops(pruned, 64, 32) == report["flops_after"]
    assert pruned.eval()(torch.randn(1, 3, 64, 32)).shape == (1, 512)
    assert (tmp_path / "prune" / "architecture.json").is_file()


def decay_trace(schedule: str, monkeypatch) -> dict:
    """Progressive pruning (PLFP, 3 epochs, the decays after epochs 1 and 2, zero after 3) on a
    tiny set, with a learning rate so small that only the pruner changes the weights. Returns,
    per pruning step, every group's filters just before it and just after it, and its selection."""
    from reid_models.pruning.prune import ChannelSelector
    from tests.test_recovery import tiny_set

    steps: list[dict] = []
    select = ChannelSelector.select

    def spy(self, *args, **kwargs):
        before = {g.name: g.filters.clone() for g in self.graph.filter_groups()}
        selection = select(self, *args, **kwargs)
        steps.append({"graph": self.graph, "before": before, "selection": selection})
        return selection

    def after_step(record: dict) -> None:  # train_model calls it after the epoch hook
        if steps and "after" not in steps[-1]:
            steps[-1]["after"] = {g.name: g.filters.clone() for g in steps[-1]["graph"].filter_groups()}

    monkeypatch.setattr(ChannelSelector, "select", spy)
    recipe = PruneSettings().finetune.model_copy(update={"epochs": 3, "warmup_epochs": 0, "lr": 1e-12,
                                                         "ids_per_batch": 3, "images_per_id": 4,
                                                         "batches_per_epoch": 1})
    settings = PruneSettings(criterion="plfp", schedule=schedule, remove_at=1.0, distill=False,
                             bn_recalibration_batches=0, finetune=recipe, flops_reduction=0.2)
    model = trained_looking("resnet18")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two threads wait on each other: 4x slower here
    try:
        report = prune_model(model, build_criterion("plfp", settings.plfp_k), settings, tiny_set(),
                             torch.device("cpu"), H, W, on_epoch=after_step, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"steps": steps, "decay": settings.decay, "removed": {n: c["removed"] for n, c in report.channels.items()}}


def check_progressive_decay(trace: dict) -> None:
    steps, decay = trace["steps"], trace["decay"]
    assert len(steps) == 3 and all("after" in step for step in steps) and 0 < decay < 1
    original = steps[0]["before"]
    times_selected = {name: torch.zeros(len(filters)) for name, filters in original.items()}
    for epoch, step in enumerate(steps):
        last = epoch == len(steps) - 1
        for name, before in step["before"].items():
            chosen = torch.zeros(len(before), dtype=torch.bool)
            chosen[step["selection"].get(name, [])] = True
            factor = torch.where(chosen, torch.tensor(0.0 if last else decay), torch.tensor(1.0))[:, None]
            # This step multiplied its selection by the decay (zero at the end) and left the rest.
            assert torch.allclose(step["after"][name], before * factor, rtol=1e-6, atol=1e-9), (epoch, name)
            if not last:
                times_selected[name] += chosen
                # Since the start: decay ** (times selected), e.g. decay ** 2 after two selections.
                expected = original[name] * decay ** times_selected[name][:, None]
                assert torch.allclose(step["after"][name], expected, rtol=1e-5, atol=1e-8), (epoch, name)
    twice = sum(int((n == 2).sum()) for n in times_selected.values())
    assert twice > 0, "no channel was selected after both epochs: decay ** 2 was never checked"
    assert trace["removed"] == {n: len(c) for n, c in steps[-1]["selection"].items()}  # what was zeroed went


@pytest.mark.parametrize("schedule", ["legacy", "gradual"])
def test_progressive_pruning_decays_the_selection_every_epoch(schedule, monkeypatch):
    """PLFP is soft and progressive: after each epoch the selected filters are multiplied by
    `decay` (twice selected: decay ** 2), and only the last step zeroes them before removal."""
    check_progressive_decay(decay_trace(schedule, monkeypatch))


@pytest.mark.parametrize("schedule", ["legacy", "gradual"])
def test_the_decay_check_fails_a_pruner_that_only_zeroes_at_the_end(schedule, monkeypatch):
    """The check above has teeth: hard pruning in disguise (nothing decays, the selection is
    zeroed after the last epoch) does not pass it."""
    from reid_models.pruning.prune import GradualPruner, ProgressivePruner

    def zero_at_the_end(self, epoch: int) -> None:
        selection = self.selector.select()
        if epoch >= self.last:
            self.selector.graph.scale_channels(selection, 0.0)

    for pruner in (ProgressivePruner, GradualPruner):
        monkeypatch.setattr(pruner, "after_epoch", zero_at_the_end)
    trace = decay_trace(schedule, monkeypatch)
    with pytest.raises(AssertionError):
        check_progressive_decay(trace)


def test_prune_command_rejects_a_checkpoint_of_another_architecture(tmp_path):
    import subprocess
    import sys

    from reid_models.checkpoint import save_checkpoint
    from tests.conftest import PARAMS, ROOT

    model = ReIDNet("osnet_x0_25", 4)
    payload = {"state_dict": model.state_dict(), "architecture": architecture_spec(ReIDNet("resnet18", 4))}
    save_checkpoint(tmp_path / "foreign.pt", payload)
    result = subprocess.run([sys.executable, "-m", "flows.cli", "prune", "--checkpoint", str(tmp_path / "foreign.pt"),
                             "--out", str(tmp_path / "out"), "--params", str(PARAMS)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2
    assert "foreign.pt" in result.stdout and "another architecture" in result.stdout.replace("\n", " ")
    assert not (tmp_path / "out").exists()


def test_internal_scope_never_touches_residual_couplings():
    everything = ChannelGraph(trained_looking("resnet18"), H, W)
    internal = ChannelGraph(trained_looking("resnet18"), H, W, scope="internal")
    assert set(internal.groups) < set(everything.groups)
    assert sorted(internal.groups) == [f"backbone.layer{s}.{b}.conv1" for s in (1, 2, 3, 4) for b in (0, 1)]
    model = trained_looking("resnet18")
    report = prune_model(model, build_criterion("plfp"), PruneSettings(mode="oneshot", scope="internal"), None,
                         torch.device("cpu"), H, W)
    assert abs(report.measured_reduction - 0.5) <= 0.02
    assert model.backbone.layer1[0].conv2.out_channels == 64  # the residual stream keeps its width


def test_taylor_keeps_choosing_a_decayed_channel():
    """Progressive pruning needs a stable selection: a channel the criterion chose and that was
    then decayed must stay among the least important. Scored on conv weights alone, Taylor is
    blind to the decay (the BatchNorm after the conv undoes any scaling of its weights, so
    sum(w * dL/dw) is zero up to rounding) and kept 2% of its choice here, below chance."""
    model = trained_looking("resnet18").train()
    graph = ChannelGraph(model, H, W)
    torch.manual_seed(1)
    images, labels = torch.randn(16, 3, H, W), torch.arange(4).repeat_interleave(4)
    settings = PruneSettings().finetune

    def taylor_selection(quota: int) -> dict[str, list[int]]:
        model.zero_grad(set_to_none=True)
        reid_loss(model(images), labels, settings)["loss"].backward()
        return {g.name: build_criterion("taylor").select(g, quota) for g in graph.filter_groups(with_gradients=True)}

    chosen = taylor_selection(8)
    graph.scale_channels(chosen, PruneSettings().decay)
    again = taylor_selection(8)
    kept = sum(len(set(chosen[name]) & set(again[name])) for name in chosen) / sum(map(len, chosen.values()))
    chance = sum(8 / g.channels for g in graph.filter_groups()) / len(graph.groups)
    assert kept > 3 * chance


def test_a_shared_allocation_leaves_criteria_only_the_choice_of_filters():
    """With allocation_criterion set, every criterion removes the same number of channels per
    group (the shared ranking's), so a comparison measures which filters go, not how many."""
    from reid_models.pruning.prune import ChannelSelector

    def selection(criterion: str, shared: str | None) -> dict[str, list[int]]:
        settings = PruneSettings(criterion=criterion, allocation_criterion=shared)
        return ChannelSelector(trained_looking("resnet18"), build_criterion(criterion, seed=3), settings, H, W).select()

    own_l2, own_random = selection("l2", None), selection("random", None)
    shared_l2, shared_random = selection("l2", "l1"), selection("random", "l1")
    counts = {name: len(channels) for name, channels in shared_l2.items()}
    assert counts == {name: len(channels) for name, channels in shared_random.items()}
    assert counts == {name: len(channels) for name, channels in selection("l1", None).items()}
    assert shared_l2 != shared_random  # the criterion still chooses which ones
    assert {n: len(c) for n, c in own_l2.items()} != {n: len(c) for n, c in own_random.items()}
