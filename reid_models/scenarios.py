"""Where in a ReID model's life to prune it: the scenarios, with equal training budgets.

Every scenario starts from the same source-trained model (except `small_dense`, which trains a
thinner network through the same pretraining) and then spends exactly `scenarios.epochs`
epochs of `scenarios.batches_per_epoch` P x K batches, so all see the same number of training
images after pretraining (recorded as `images_seen`):

- source_only   no adaptation, no pruning: the lower bound (0 images).
- adapt_only    adapt for all epochs: the unpruned reference.
- adapt_short   adapt for (epochs - prune_epochs): the control for prune_before / prune_after,
                which adapt only that long (the cost of their pruning epochs made visible).
- prune_before  prune on source data (`prune_epochs`), then adapt for the rest.
- prune_during  adapt for all epochs with progressive decay after each one; removal at the end.
- prune_after   adapt (epochs - prune_epochs), then prune on target data with `prune_epochs`
                of recovery (progressive decay, or one-shot removal then fine-tuning).
- small_dense   a dense network thinned to the pruned FLOPs, trained from scratch on source
                with the pretraining recipe, then adapted for all epochs (Masson et al. 2021:
                pruning a larger network should beat training a smaller one).

Adaptation is supervised (target labels) or unsupervised (clustered pseudo-labels). Each
scenario runs as resumable steps: a finished step's model is saved and a re-run starts after
it; inside a step, training resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from reid_models.adapt import ClusterSettings, MemorySettings, adapt_unsupervised
from reid_models.checkpoint import load_checkpoint, save_checkpoint, save_json
from reid_models.complexity import count_flops, measure
from reid_models.config import PruneSettings, ScenarioSettings, Settings
from reid_models.data.loading import ImageSet, test_transform
from reid_models.models import GLOBAL_RNG_LOCK, ReIDNet, resolve_device
from reid_models.pruning.budget import allocate
from reid_models.pruning.criteria import L1Norm, build_criterion
from reid_models.pruning.graph import ChannelGraph
from reid_models.pruning.prune import (ChannelSelector, GradualPruner, ProgressivePruner, gradient_batches,
                                       prune_model)
from reid_models.pruning.recovery import Teacher, recalibrate_batchnorm, removal_epochs, training_gflops
from reid_models.pruning.spec import architecture_spec
from reid_models.scenario_kinds import BY_NAME, SCENARIO_NAMES
from reid_models.stages import evaluate_model, load_domain, model_from_payload, model_payload, pretrain, training_images
from reid_models.stats import PER_QUERY_FILE, save_per_query
from reid_models.train import EpochCallback, train_model

log = logging.getLogger(__name__)

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
TEACHER_FILE = "teacher.pt"
VAL_PER_QUERY_FILE = "per_query_val.npz"  # target validation split, per query (PER_QUERY_FILE: test)


@dataclass(frozen=True)
class Scenario:
    name: str
    criterion: str  # "none" when the scenario does not prune
    flops_reduction: float  # 0 for the unpruned ones; small_dense: the reduction it matches
    adaptation: str  # supervised | unsupervised | none (source_only)
    seed: int

    @property
    def key(self) -> str:
        return f"{self.name}-{self.criterion}-{self.flops_reduction:g}-{self.adaptation}-seed{self.seed}"


def expand_grid(settings: Settings) -> list[Scenario]:
    """The runs of the grid, without duplicates (a scenario that does not prune ignores criteria)."""
    grid = settings.scenarios
    runs: list[Scenario] = []
    for seed in grid.seeds:
        for name in grid.names:
            kind = BY_NAME[name]
            criteria = grid.criteria if kind.prunes else ["none"]
            reductions = grid.flops_reductions if kind.prunes or kind.thin else [0.0]
            adaptations = grid.adaptation if kind.adapts else ["none"]
            for criterion in criteria:
                for reduction in reductions:
                    for adaptation in adaptations:
                        run = Scenario(name, criterion, reduction, adaptation, seed)
                        if run not in runs:
                            runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------
# small_dense: the same architecture family, thinner, trained from scratch


def thin_dense_model(name: str, flops_reduction: float, num_classes: int, height: int, width: int,
                     generator: torch.Generator | None = None) -> ReIDNet:
    """`name` with every channel group narrowed uniformly until it has (1 - reduction) of the
    FLOPs, then freshly initialised (torchreid's scheme) from `generator`: a small dense network,
    not a pruned one."""
    with GLOBAL_RNG_LOCK:  # building and tracing draw from torch's global RNG (see GLOBAL_RNG_LOCK)
        model = ReIDNet(name, num_classes=num_classes)
        graph = ChannelGraph(model, height, width)
        groups = graph.filter_groups()
        counts = allocate(model, groups, L1Norm(), flops_reduction, height, width, "uniform", 0.95, False, 1)
        graph.remove_channels({group.name: list(range(counts[group.name])) for group in groups})
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()
    model.reset_classifier(num_classes, generator=generator)
    return model


def pretrain_small_dense(settings: Settings, flops_reduction: float, out_dir: str | Path,
                         on_epoch: EpochCallback | None = None) -> str:
    """The thin dense network, trained on source with the same recipe as the full one."""
    model_path = Path(out_dir) / "model.pt"
    if model_path.is_file():  # the pretraining resumes from last.pt; a finished one is reused
        return str(model_path)
    thin = thin_dense_model(settings.pretrain.model, flops_reduction, 2, settings.data.height, settings.data.width,
                            generator=torch.Generator().manual_seed(settings.seed))
    return pretrain(settings, out_dir, on_epoch=on_epoch, model=thin)["checkpoint"]


# ---------------------------------------------------------------------------------------------
# One scenario


# A scenario's recipe version: bump it when its steps change in code, and its saved results (and
# only its) are redone. Settings need no entry here: a changed setting a scenario reads changes
# its fingerprint by itself.
RECIPE_VERSION = {name: 1 for name in SCENARIO_NAMES}


def settings_read(scenario: Scenario, settings: Settings) -> dict:
    """The settings a scenario's steps read, and nothing else: a setting outside it (another
    scenario's, `reid-prune prune`'s `prune.criterion`, a head the run does not use) can change
    without re-running it. The criterion and the FLOPs cut come from the scenario itself."""
    reads = {"data": settings.data.model_dump(mode="json"), "evaluate": settings.evaluate.model_dump(mode="json"),
             "budget": settings.scenarios.model_dump(mode="json", include={"epochs", "prune_epochs",
                                                                            "batches_per_epoch"}),
             "device": settings.device,
             "torch_threads": torch.get_num_threads()}  # sums in another order: other float results
    if scenario.adaptation != "none":
        reads["adapt"] = adaptation_settings_read(scenario, settings)
    if BY_NAME[scenario.name].prunes:
        reads["prune"] = settings.prune.model_dump(mode="json", exclude=_unread_prune_settings(settings))
    return reads


def adaptation_settings_read(scenario: Scenario, settings: Settings) -> dict:
    """Supervised steps read the recipe (`adapt.train`, the backbone's lr scale); unsupervised
    ones also the clustering, the head (its memory only when it is one, the camera proxies'
    settings only when on), the mean teacher, and -- in a step that prunes -- whose features
    are clustered."""
    adapt = settings.adapt
    fields = {"backbone_lr_scale", "train"}
    if scenario.adaptation == "unsupervised":
        fields |= {"epochs_per_round", "cluster", "head", "mean_teacher"}
        if adapt.head == "memory":
            fields.add("memory")
        if BY_NAME[scenario.name].prunes_on_target:
            fields.add("pseudo_labels")
    read = adapt.model_dump(mode="json", include=fields)
    if "memory" in read and not adapt.memory.camera_proxies:
        for key in ("camera_weight", "camera_negatives"):
            del read["memory"][key]
    return read


def _unread_prune_settings(settings: Settings) -> set[str]:
    unread = {"criterion", "flops_reduction"}  # the scenario's own
    if settings.prune.budget == "flops":  # the latency table is never built
        unread |= {"latency_runtime", "latency_threads", "latency_batch", "latency_cache", "latency_corrections"}
    return unread


def fingerprint(scenario: Scenario, settings: Settings, start_checkpoint: str | Path) -> str:
    """What a finished scenario's results depend on: the model it starts from, the settings its
    steps read and its recipe version; any of them changing re-runs it."""
    digest = hashlib.sha1(Path(start_checkpoint).read_bytes())
    relevant = {"scenario": asdict(scenario), "reads": settings_read(scenario, settings),
                "version": RECIPE_VERSION[scenario.name]}
    digest.update(json.dumps(relevant, sort_keys=True).encode())
    return digest.hexdigest()


class ScenarioRun:
    """Runs one scenario's steps on one model, saving the model after each step."""

    def __init__(self, scenario: Scenario, settings: Settings, out_dir: Path, on_epoch: EpochCallback | None,
                 on_round: Callable[[dict], None] | None, progress: bool) -> None:
        self.scenario, self.settings, self.out_dir = scenario, settings, out_dir
        self.on_epoch, self.on_round, self.progress = on_epoch, on_round, progress
        self.device = resolve_device(settings.device)
        self.height, self.width = settings.data.height, settings.data.width
        self.model: ReIDNet | None = None
        self.generator: torch.Generator | None = None  # the running step's (new identity heads)
        self.steps: list[dict] = []  # per step: name, epochs, images, history, teacher, train_gflops
        self.info: dict = {}  # the running step's teacher, train_gflops, recalibration images
        self.teacher: Teacher | None = None  # the pruning step's, kept for its recovery step
        self._images: dict[str, ImageSet] = {}

    # --- data and settings ---------------------------------------------------------------

    def images(self, domain: str) -> ImageSet:
        if domain not in self._images:
            data = self.settings.data
            splits = load_domain(getattr(data, domain), data, check_images=False)
            self._images[domain] = training_images(splits, data, self.settings.adapt.train.augment)
        return self._images[domain]

    def validation_images(self) -> ImageSet:
        """The target's validation identities (query and gallery), plain view: where unsupervised
        rounds measure their clustering against true identities (never the training labels)."""
        if "target_val" not in self._images:
            data = self.settings.data
            query, gallery = load_domain(data.target, data, check_images=False).evaluation_split("val")
            self._images["target_val"] = ImageSet.from_items(query + gallery, data.height, data.width,
                                                             test_transform(), progress=False)
        return self._images["target_val"]

    def prune_settings(self, epochs: int) -> PruneSettings:
        prune = self.settings.prune
        finetune = prune.finetune.model_copy(update={"epochs": epochs, "warmup_epochs": 0,
                                                     "batches_per_epoch": self.settings.scenarios.batches_per_epoch})
        return prune.model_copy(update={"criterion": self.scenario.criterion,
                                        "flops_reduction": self.scenario.flops_reduction, "finetune": finetune})

    def adapt_recipe(self, epochs: int):
        return self.settings.adapt.train.model_copy(update={
            "epochs": epochs, "warmup_epochs": 0, "batches_per_epoch": self.settings.scenarios.batches_per_epoch})

    # --- resumable steps -------------------------------------------------------------------

    def step(self, name: str, run: Callable[[Path], list[dict]]) -> None:
        """Run a step unless its saved model exists; either way the model is the step's output.

        `run` may fill `self.info` (teacher, train_gflops, recalibration images): it is saved
        with the step's model and recorded in `self.steps`."""
        index = len(self.steps) + 1
        step_dir = self.out_dir / f"step{index}_{name}"
        saved = step_dir / "model.pt"
        if saved.is_file():
            payload = load_checkpoint(saved)
            self.model = model_from_payload(payload, str(saved))
            history = payload["history"]
            info = payload.get("info", {})
            if (step_dir / TEACHER_FILE).is_file():  # the recovery step after it needs its teacher
                saved_teacher = load_checkpoint(step_dir / TEACHER_FILE)
                self.teacher = Teacher(model_from_payload(saved_teacher, str(step_dir / TEACHER_FILE)),
                                       self.settings.prune, saved_teacher["momentum"], saved_teacher["label"],
                                       distill=self.settings.prune.distill)
            log.info("%s: step %d (%s) already done", self.scenario.key, index, name)
        else:
            # The step's own generator (new identity heads): never torch's global RNG, which
            # scenarios running in other threads share.
            self.generator = torch.Generator().manual_seed(self.scenario.seed * 7919 + index)
            self.info = {}
            history = run(step_dir)
            self.model.cpu()
            info = self.info
            if self.teacher is not None:  # a later step (recovery) goes on with this teacher
                save_checkpoint(step_dir / TEACHER_FILE, model_payload(
                    self.teacher.model, self.settings, [], momentum=self.teacher.momentum, label=self.teacher.label))
            save_checkpoint(saved, model_payload(self.model, self.settings, history, step=name, info=info))
        images = sum(r.get("images", 0) for r in history)
        self.steps.append({"name": name, "epochs": len(history) if history and "epoch" in history[0] else
                           sum(r.get("epochs", 0) for r in history),
                           "images": images, "history": history,
                           **info})
        if "train_gflops" not in info:  # a step saved before train_gflops was recorded
            self.steps[-1]["train_gflops"] = training_gflops(images, self.start_flops)

    @property
    def start_flops(self) -> int:
        return count_flops(self.model, self.height, self.width)

    def prune_on_source(self, epochs: int) -> None:
        def run(step_dir: Path) -> list[dict]:
            settings = self.prune_settings(epochs)
            criterion = build_criterion(settings.criterion, settings.plfp_k, self.scenario.seed)
            report = prune_model(self.model, criterion, settings, self.images("source"), self.device, self.height,
                                 self.width, seed=self.scenario.seed, checkpoint_path=step_dir / "last.pt",
                                 on_epoch=self.on_epoch, progress=self.progress)
            save_json(step_dir / "prune_report.json", report.as_dict())
            self.info = {"teacher": "source model (frozen)" if report.teacher != "none" else "none",
                         "train_gflops": report.train_gflops, "recalibration_images": report.recalibration_images}
            return report.history

        self.step("prune_source", run)

    def adapt(self, epochs: int, prune: bool = False, progressive: bool = True) -> None:
        """Adapt to the target for `epochs`; with `prune`, prune on the way: progressive (the
        gradual ramp-remove-recover schedule as two steps, or the legacy decay riding on every
        epoch) or one-shot removal before the epochs."""
        if not prune:
            self.train_on_target("adapt", epochs)
        elif not progressive:
            self.train_on_target("prune_target", epochs, pruning="oneshot")
        elif self.settings.prune.schedule == "legacy":
            self.train_on_target("prune_target", epochs, pruning="legacy")
        else:
            ramp = removal_epochs(epochs, self.settings.prune.remove_at)
            self.train_on_target("prune_target", epochs, pruning="ramp", span=(0, ramp))
            if ramp < epochs:
                self.train_on_target("recover_target", epochs, pruning="recover", span=(ramp, epochs))

    def teacher_labels(self) -> bool:
        """Unsupervised pruning steps cluster the unpruned teacher's features (`adapt.pseudo_labels`)."""
        return self.scenario.adaptation == "unsupervised" and self.settings.adapt.pseudo_labels == "teacher"

    def make_teacher(self) -> Teacher | None:
        """The unpruned teacher of a target pruning step (see the module docstring): for
        distillation, or (`distill: false`) only for its features as the source of pseudo-labels."""
        prune = self.settings.prune
        if not prune.distill and not self.teacher_labels():
            return None
        if self.scenario.name == "prune_during" and prune.during_teacher == "ema":
            return Teacher(self.model, prune, prune.teacher_momentum,
                           f"mean teacher (EMA {prune.teacher_momentum:g}) of the adapting model, frozen at removal",
                           distill=prune.distill)
        start = "source model" if self.scenario.name == "prune_during" else "adapted model"
        return Teacher(self.model, prune, 0.0, f"{start} (frozen)", distill=prune.distill)

    def train_on_target(self, name: str, epochs: int, pruning: str | None = None,
                        span: tuple[int, int] | None = None) -> None:
        """One target step of `epochs` (or the `span` of them): plain adaptation (`pruning` None),
        the gradual schedule's `ramp` (ends with removal and BatchNorm recalibration) or `recover`
        part, `legacy` progressive decay, or `oneshot` removal then training."""
        adaptation, settings = self.scenario.adaptation, self.settings
        first, stop = span or (0, epochs)

        def run(step_dir: Path) -> list[dict]:
            model, target = self.model, self.images("target")
            model.to(self.device)  # gradient batches (taylor, one-shot) are on the device before training starts
            prune_settings = self.prune_settings(epochs)
            criterion = build_criterion(self.scenario.criterion, prune_settings.plfp_k, self.scenario.seed) \
                if pruning in ("ramp", "legacy", "oneshot") else None
            if pruning in ("ramp", "legacy", "oneshot"):
                self.teacher = self.make_teacher()
            teacher = self.teacher if pruning else None
            pruner: ProgressivePruner | None = None  # GradualPruner is one
            student_flops = self.start_flops

            def selector_for(train_set: ImageSet) -> ChannelSelector:
                batches = gradient_batches(train_set, prune_settings, self.scenario.seed, self.device)
                return ChannelSelector(model, criterion, prune_settings, self.height, self.width, batches)

            def on_labels(train_set: ImageSet) -> None:
                # A new head per round (pseudo-identities change), so the channel graph is rebuilt.
                model.reset_classifier(int(train_set.labels.max()) + 1, generator=self.generator)
                if pruner is not None:
                    pruner.selector = selector_for(train_set)

            if pruning == "legacy":
                pruner = ProgressivePruner(None, prune_settings.decay, epochs)
            elif pruning == "ramp":
                pruner = GradualPruner(None, prune_settings, stop)
            # Every target step, pruning or not, uses one lr recipe (a fresh head at adapt.train.lr, the
            # backbone at backbone_lr_scale of it), so scenarios differ in where they prune, not in lr.
            options = dict(on_epoch=self.on_epoch, backbone_lr_scale=settings.adapt.backbone_lr_scale,
                           progress=self.progress, epoch_hook=pruner.after_epoch if pruner else None, teacher=teacher)
            if adaptation == "supervised":
                if pruning != "recover":  # the recovery keeps the head the ramp trained
                    on_labels(target)
                if pruning == "oneshot":
                    selector = selector_for(target)
                    selector.graph.remove_channels(selector.select())
                    student_flops = self.start_flops
                history = train_model(model, target, self.adapt_recipe(epochs), self.device, seed=self.scenario.seed,
                                      checkpoint_path=step_dir / "last.pt", epochs=(first, stop), **options)
            else:
                cluster = ClusterSettings(**settings.adapt.cluster.model_dump())
                history = adapt_unsupervised(
                    model, target, self.adapt_recipe(stop - first), cluster, settings.adapt.epochs_per_round,
                    self.device, seed=self.scenario.seed + 1000 * first, on_round=self.on_round,
                    validation=self.validation_images(), on_labels=on_labels, checkpoint_dir=step_dir,
                    memory=MemorySettings(**settings.adapt.memory.model_dump()) if settings.adapt.head == "memory"
                    else None, label_model=teacher.model if teacher and self.teacher_labels() else None,
                    mean_teacher=settings.adapt.mean_teacher, **options)
            recalibrated = 0
            if pruner is not None:
                save_json(step_dir / "channels.json", pruner.finish())
            if pruning in ("ramp", "oneshot") and prune_settings.bn_recalibration_batches:
                recipe = settings.adapt.train
                recalibrated = recalibrate_batchnorm(model, target, prune_settings.bn_recalibration_batches,
                                                     recipe.ids_per_batch, recipe.images_per_id, self.scenario.seed,
                                                     self.device)
            teacher_flops = count_flops(teacher.model, self.height, self.width) if teacher and teacher.distill else 0
            labelled_by = teacher.label if teacher and self.teacher_labels() else \
                f"mean teacher (EMA {settings.adapt.mean_teacher:g})" if settings.adapt.mean_teacher and not teacher \
                else "student"
            self.info = {"teacher": teacher.label if teacher else "none", "recalibration_images": recalibrated,
                         **({"pseudo_labels": labelled_by} if adaptation == "unsupervised" else {}),
                         "train_gflops": training_gflops(sum(r.get("images", 0) for r in history), student_flops,
                                                         teacher_flops, recalibrated, self.start_flops)}
            return history

        self.step(name, run)

    def prune_then_recover_on_target(self, epochs: int) -> None:
        """prune_after's pruning step: the target's (pseudo-)labels drive the recovery."""
        progressive = self.settings.prune.mode == "progressive" or self.scenario.adaptation == "unsupervised"
        self.adapt(epochs, prune=True, progressive=progressive)


def _source_model(scenario: Scenario, settings: Settings, source_checkpoint: str | Path,
                  small_dense_checkpoint: str | Path | None) -> tuple[ReIDNet, Path]:
    start = Path(small_dense_checkpoint if scenario.name == "small_dense" else source_checkpoint)
    if scenario.name == "small_dense" and small_dense_checkpoint is None:
        raise ValueError("the small_dense scenario needs its own source-trained thin model (small_dense_checkpoint)")
    return model_from_payload(load_checkpoint(start), str(start)), start


def _adaptation_epochs(budget: ScenarioSettings) -> int:
    """What before/after (and their control, adapt_short) spend adapting: the rest goes to pruning."""
    return budget.epochs - budget.prune_epochs


def _prune_before(run: ScenarioRun, budget: ScenarioSettings) -> None:
    run.prune_on_source(budget.prune_epochs)
    run.adapt(_adaptation_epochs(budget))


def _prune_after(run: ScenarioRun, budget: ScenarioSettings) -> None:
    run.adapt(_adaptation_epochs(budget))
    run.prune_then_recover_on_target(budget.prune_epochs)


# The steps of each scenario kind (`scenario_kinds.KINDS` says what each is), on equal budgets.
STEPS: dict[str, Callable[[ScenarioRun, ScenarioSettings], None]] = {
    "source_only": lambda run, budget: None,
    "adapt_only": lambda run, budget: run.adapt(budget.epochs),
    "adapt_short": lambda run, budget: run.adapt(_adaptation_epochs(budget)),
    "prune_before": _prune_before,
    "prune_during": lambda run, budget: run.adapt(budget.epochs, prune=True, progressive=True),
    "prune_after": _prune_after,
    "small_dense": lambda run, budget: run.adapt(budget.epochs),  # its thin network, pretrained on the source
}
assert set(STEPS) == set(SCENARIO_NAMES), "every scenario kind needs its steps"


def run_scenario(scenario: Scenario, settings: Settings, source_checkpoint: str | Path, out_dir: str | Path,
                 small_dense_checkpoint: str | Path | None = None, on_epoch: EpochCallback | None = None,
                 on_round: Callable[[dict], None] | None = None, progress: bool = True) -> dict:
    """Run one scenario (or return its saved result when nothing it depends on changed).

    Writes in `out_dir`: `model.pt` (the final model, with its architecture spec), the spec again
    as `architecture.json`, `cmc.json` (target CMC curve), `per_query.npz` (target test, per valid
    query: pid, camid, rank1 hit, AP; what the paired comparisons resample) and `result.json` (one
    row; its `result_dir` is `out_dir`).
    """
    out_dir = Path(out_dir)
    model, start = _source_model(scenario, settings, source_checkpoint, small_dense_checkpoint)
    key = fingerprint(scenario, settings, start)
    marker = out_dir / "fingerprint.txt"
    if marker.is_file() and marker.read_text() != key:
        log.info("%s: settings changed since the last run; starting over", scenario.key)
        shutil.rmtree(out_dir)
    if (out_dir / "result.json").is_file():
        if not (out_dir / PER_QUERY_FILE).is_file():  # finished before per-query results were saved
            save_per_query(out_dir / PER_QUERY_FILE, _evaluate_on(_saved_model(out_dir), settings, "target")["test"]["per_query"])
        return {**json.loads((out_dir / "result.json").read_text()), "result_dir": str(out_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)

    began = time.perf_counter()
    budget = settings.scenarios
    run = ScenarioRun(scenario, settings, out_dir, on_epoch, on_round, progress)
    run.model = model
    STEPS[scenario.name](run, budget)

    final = run.model.cpu().eval()
    save_checkpoint(out_dir / "model.pt", model_payload(final, settings, [], scenario=asdict(scenario)))
    save_json(out_dir / "architecture.json", architecture_spec(final))
    metrics, cmc, per_query = evaluate_scenario_model(final, settings)
    save_json(out_dir / "cmc.json", {"rank": list(range(1, len(cmc) + 1)), "target_cmc": cmc})
    save_per_query(out_dir / PER_QUERY_FILE, per_query["test"])
    if "val" in per_query:  # what paired choices of settings resample
        save_per_query(out_dir / VAL_PER_QUERY_FILE, per_query["val"])
    row = {**asdict(scenario), **metrics,
           "images_seen": sum(step["images"] for step in run.steps),
           "epochs": sum(step["epochs"] for step in run.steps),
           "steps": "+".join(step["name"] for step in run.steps) or "none",
           "train_gflops": sum(step["train_gflops"] for step in run.steps),
           "teacher": "; ".join(dict.fromkeys(step["teacher"] for step in run.steps
                                              if step.get("teacher", "none") != "none")) or "none",
           "pseudo_labels": "; ".join(dict.fromkeys(step["pseudo_labels"] for step in run.steps
                                                    if "pseudo_labels" in step)) or "none",
           "recovery": recovery_settings(scenario, settings),
           "torch_threads": torch.get_num_threads(),
           "seconds": time.perf_counter() - began, "result_dir": str(out_dir)}
    save_json(out_dir / "steps.json", run.steps)
    save_json(out_dir / "result.json", row)
    for partial in out_dir.glob("step*/*.pt"):  # resume points, no longer needed: keep outputs small
        partial.unlink()
    return row


def _saved_model(out_dir: Path) -> ReIDNet:
    path = out_dir / "model.pt"
    return model_from_payload(load_checkpoint(path), str(path)).eval()


def _evaluate_on(model: ReIDNet, settings: Settings, domain: str, splits: tuple[str, ...] = ("test",)) -> dict:
    """`evaluate_features`' results per query/gallery split ("test", "val") of a domain read once."""
    read = load_domain(getattr(settings.data, domain), settings.data, check_images=False)
    device = resolve_device(settings.device)
    return {split: evaluate_model(model, read, settings.data, settings.evaluate, device, split) for split in splits}


def recovery_settings(scenario: Scenario, settings: Settings) -> str:
    """The pruning recovery a row ran with, as one readable string (the ablation columns)."""
    if not BY_NAME[scenario.name].prunes:
        return "none"
    p = settings.prune
    distill = (f"distill f{p.distill_feature_weight:g}/r{p.distill_relation_weight:g}"
               + (f" {p.during_teacher}" if scenario.name == "prune_during" else "")) if p.distill else "no distill"
    schedule = f"gradual {p.ramp} remove@{p.remove_at:g}" if p.schedule == "gradual" else "legacy"
    allocation = p.allocation + (f" by {p.allocation_criterion}" if p.allocation_criterion else "")
    return (f"{schedule}, {distill}, bn-recal {p.bn_recalibration_batches}, scope {p.scope}, decay {p.decay:g}, "
            f"allocation {allocation}")


def evaluate_scenario_model(model: ReIDNet, settings: Settings) -> tuple[dict, list[float], dict]:
    """Cost of the physical model and Market-1501 metrics: target test (the question), source
    test (what adapting forgot) and target validation (`val_`: where settings are chosen). Also
    returns the target's CMC curve and its per-query results by split ("test", and "val")."""
    cost = measure(model, settings.data.height, settings.data.width)
    row = {key: cost[key] for key in ("flops", "macs", "params", "size_bytes", "latency_ms", "throughput_ips")}
    target = _evaluate_on(model, settings, "target", ("test", "val") if settings.data.val_share > 0 else ("test",))
    source = _evaluate_on(model, settings, "source")["test"]
    evaluated = [("", target["test"]), ("source_", source)] + ([("val_", target["val"])] if "val" in target else [])
    per_query = {split: result["per_query"] for split, result in target.items()}
    for prefix, metrics in evaluated:
        row.update({f"{prefix}{name}": float(metrics[name]) for name in METRICS})
    return row, [float(value) for value in target["test"]["cmc"]], per_query


def images_budget(settings: Settings) -> int:
    """Training images every adapting scenario sees after pretraining."""
    grid, recipe = settings.scenarios, settings.adapt.train
    return grid.epochs * grid.batches_per_epoch * recipe.ids_per_batch * recipe.images_per_id


def check_budget(settings: Settings) -> None:
    """The pruning fine-tune and the adaptation must use the same batch shape, or the scenarios'
    images seen would differ."""
    prune, adapt = settings.prune.finetune, settings.adapt.train
    if (prune.ids_per_batch, prune.images_per_id) != (adapt.ids_per_batch, adapt.images_per_id):
        raise ValueError(f"prune.finetune batches ({prune.ids_per_batch} x {prune.images_per_id}) and adapt.train "
                         f"batches ({adapt.ids_per_batch} x {adapt.images_per_id}) differ; scenarios would see "
                         "different numbers of images: make ids_per_batch and images_per_id equal")

