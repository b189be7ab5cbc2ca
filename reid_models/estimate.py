"""How long a run will take here: its work counted in images, priced with this machine's probe.

Each piece of a run (rendering a domain, pretraining, one scenario) is counted in images: images
rendered, training images (forward, loss, backward, step) and feature-extraction images
(eval-mode forward: evaluation, clustering, latency timing). The probe (`reid_models.speed_probe`)
measures this machine's images/s for both at the threads a piece runs with, and a small renderer
probe prices the synthetic data. The pretraining stage (the source model, and small_dense's thin
network beside it on a free worker) and the scenario grid run `orchestration.workers` pieces at
once, scheduled here as the task runner schedules them, in submission order onto the first free
worker.

What the image counts leave out (image decoding and augmentation, ranking, clustering, checkpoints,
MLflow and Prefect bookkeeping) is one factor, `OVERHEAD`, measured against real runs
(docs/RESULTS.md section 1 gives the runs and the estimate's error).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from reid_models.config import DataSettings, Settings
from reid_models.data.readers import ReIDSplits, hold_out_validation, read_dataset

# Real time / priced time, measured (docs/RESULTS.md s.1): 0.98 for a clean-clone `make run` of the
# default profile, 0.96 for the quick profile. What the counts leave out is about what the probe,
# a training step on random tensors at batch 64, over-prices.
OVERHEAD = 1.0
LATENCY_TIMING_IMAGES = 250  # `complexity.measure`: warm-ups, 10 x batch 1, 5 x batch 32
# Shipping each final model after the grid (reid_models.shipping.ship_scenario): tracing the export,
# the ONNX Runtime check, int8 calibration, MLflow's onnx flavour. Not image-bound; priced as the
# inference images it takes as long as; its target-test scoring is counted apart.
EXPORT_IMAGES = 1100  # 6.8-9.4 s at 127-137 inference images/s, 1 thread, two runs: `python -m bench.ship_cost` (RESULTS s.4)


@dataclass(frozen=True)
class Speed:
    """This machine's images/s at the threads a piece of the pipeline runs with."""
    train: float
    inference: float
    render: float  # synthetic images rendered per second, all `data.synth.workers`
    threads: int

    def as_dict(self) -> dict:
        return {"train": self.train, "inference": self.inference, "render": self.render, "threads": self.threads}


@dataclass(frozen=True)
class Piece:
    stage: str  # data | pretrain | scenarios
    name: str
    render_images: int = 0
    train_images: int = 0
    extract_images: int = 0

    def seconds(self, speed: Speed) -> float:
        counted = (self.render_images / speed.render + self.train_images / speed.train
                   + self.extract_images / speed.inference)
        return OVERHEAD * counted


@dataclass
class Plan:
    """The pieces a run still has to do, and what they cost on this machine."""
    pieces: list[Piece]
    workers: int
    speed: Speed
    scenario_keys: list[str] = field(default_factory=list)  # the grid's, to tell them from other pieces
    skipped: list[str] = field(default_factory=list)  # finished earlier: the run reuses them

    def stage_seconds(self, stage: str) -> float:
        chosen = [p.seconds(self.speed) for p in self.pieces if p.stage == stage]
        return sum(chosen) if stage == "data" else makespan(chosen, self.workers)

    def total_seconds(self) -> float:
        return sum(self.stage_seconds(stage) for stage in ("data", "pretrain", "scenarios"))


def makespan(durations: list[float], workers: int) -> float:
    """Wall time of tasks taken in order by the first free of `workers` workers."""
    free_at = [0.0] * max(1, workers)
    for duration in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + duration)
    return max(free_at)


# --- counting ----------------------------------------------------------------------------------

def domain_splits(domain: str, settings: DataSettings) -> tuple[ReIDSplits, bool]:
    """A domain's splits (validation held out) and whether it must still be rendered. A synthetic
    domain not on disk yet is counted from the generator's plan, without rendering it."""
    from reid_models.data.synth import plan_domain, read_info

    chosen = getattr(settings, domain)
    if chosen.kind == "synthetic":
        spec = settings.synth.spec(domain)
        if read_info(chosen.path) != spec.info(domain, settings.seed):
            jobs = plan_domain(domain, spec, settings.seed)
            by_split = {split: [(f"{i}", job.pid, job.cam) for i, job in enumerate(jobs) if job.split == split]
                        for split in ("train", "query", "gallery")}
            splits = ReIDSplits(**by_split, name=domain, root=str(chosen.path))
            return hold_out_validation(splits, settings.val_share), True
    return hold_out_validation(read_dataset(chosen.kind, chosen.path, seed=settings.seed), settings.val_share), False


def evaluation_images(source: ReIDSplits, target: ReIDSplits) -> int:
    """Images a finished model's evaluation extracts: target test and validation, source test."""
    count = (len(target.query) + len(target.gallery) + len(target.val_query) + len(target.val_gallery)
             + len(source.query) + len(source.gallery))
    return count + LATENCY_TIMING_IMAGES


def pretraining_images(settings: Settings, source: ReIDSplits) -> int:
    """One pass over the source identities per epoch (IdentityBatchSampler's default length)."""
    recipe = settings.pretrain
    per_id: dict[int, int] = {}
    for _, pid, _ in source.train:
        per_id[pid] = per_id.get(pid, 0) + 1
    chunks = sum(max(1, n // recipe.images_per_id) for n in per_id.values())
    batches = recipe.batches_per_epoch or max(1, chunks // recipe.ids_per_batch)
    return recipe.epochs * batches * recipe.ids_per_batch * recipe.images_per_id


SOURCE_MODEL = "source model"


def thin_pretraining(reduction: float) -> str:
    return f"small_dense pretraining -{reduction:g}"


def thin_beside_source(settings: Settings) -> list[float]:
    """The FLOPs reductions whose thin networks are pretrained side by side with the source model,
    on the workers it leaves free (it trains at `orchestration.torch_threads`); the others are
    pretrained in the grid."""
    from reid_models.scenarios import expand_grid

    reductions = {s.flops_reduction for s in expand_grid(settings) if s.name == "small_dense"}
    free_workers = settings.orchestration.workers - 1 if settings.orchestration.task_runner == "threads" else 0
    return sorted(reductions)[:max(0, free_workers)]


def plan_run(settings: Settings, speed: Speed, finished: set[str] = frozenset()) -> Plan:
    """The pieces of `reid-prune run` on `settings`, minus those `finished` names (already on disk:
    SOURCE_MODEL, `thin_pretraining(r)`, scenario keys)."""
    from reid_models.scenario_kinds import BY_NAME
    from reid_models.scenarios import expand_grid, images_budget

    source, render_source = domain_splits("source", settings.data)
    target, render_target = domain_splits("target", settings.data)
    pieces: list[Piece] = []
    for domain, splits, render in (("source", source, render_source), ("target", target, render_target)):
        if render:
            count = len(splits.train) + len(splits.query) + len(splits.gallery) + len(splits.val_query) \
                + len(splits.val_gallery)
            pieces.append(Piece("data", f"render {domain}", render_images=count))
    evaluation = evaluation_images(source, target)
    if SOURCE_MODEL not in finished:
        pieces.append(Piece("pretrain", SOURCE_MODEL, train_images=pretraining_images(settings, source),
                            extract_images=len(source.query) + len(source.gallery)))
    grid = expand_grid(settings)
    skipped = [s.key for s in grid if s.key in finished]
    budget = images_budget(settings)
    rounds = -(-settings.scenarios.epochs // settings.adapt.epochs_per_round)
    thin = {s.flops_reduction for s in grid if s.name == "small_dense"} - {
        r for r in settings.scenarios.flops_reductions if thin_pretraining(r) in finished}
    beside = thin_beside_source(settings)
    for reduction in sorted(thin):  # the thin network has (1 - r) of the FLOPs: about that share of the time
        pieces.append(Piece("pretrain" if reduction in beside else "scenarios", thin_pretraining(reduction),
                            train_images=round((1 - reduction) * pretraining_images(settings, source))))
    for scenario in grid:
        if scenario.key in finished:
            continue
        grid_settings = settings.scenarios
        trains = {"source_only": 0, "adapt_short": budget * (grid_settings.epochs - grid_settings.prune_epochs)
                  // grid_settings.epochs}.get(scenario.name, budget)
        clustering = rounds * len(target.train) if scenario.adaptation == "unsupervised" else 0
        scoring = settings.prune.taylor_batches * settings.adapt.train.ids_per_batch \
            * settings.adapt.train.images_per_id if BY_NAME[scenario.name].prunes else 0
        teacher = budget // 3 if settings.prune.distill and BY_NAME[scenario.name].prunes else 0
        # Shipping runs after the grid, one model at a time; counted with its scenario, it is priced
        # in parallel with the others: some seconds too few on 2 workers.
        ship = settings.ship
        shipping = sum(EXPORT_IMAGES + len(target.query) + len(target.gallery)
                       + (ship.calibration_images if choice != "none" else 0) for choice in ship.quantize)
        # int8_qat trains qat_epochs of the grid's epochs first (and may cluster its pseudo-labels)
        qat = budget * ship.qat_epochs // settings.scenarios.epochs if "int8_qat" in ship.quantize else 0
        pieces.append(Piece("scenarios", scenario.key, train_images=trains + scoring + qat,
                            extract_images=evaluation + clustering + teacher + shipping))
    return Plan(pieces, settings.orchestration.workers, speed, [s.key for s in grid], skipped)


# --- measuring ---------------------------------------------------------------------------------

def render_speed(data: DataSettings, images: int = 24) -> float:
    """Synthetic images rendered per second here, all `data.synth.workers` processes together."""
    from reid_models.data.synth import _render_job, plan_domain

    spec = data.synth.spec("target")
    jobs = plan_domain("target", spec, data.seed)[:images]
    began = time.perf_counter()
    for job in jobs:
        _render_job((data.seed, "target", spec, job))
    return len(jobs) / (time.perf_counter() - began) * max(1, min(data.synth.workers, 2))


def measure_speed(settings: Settings, seconds: float = 10.0) -> Speed:
    """The probe at the threads the pipeline's pieces use (`orchestration.torch_threads`)."""
    from reid_models.speed_probe import probe_speed

    probe = probe_speed(settings, seconds, threads=settings.orchestration.torch_threads)
    return Speed(probe["train_images_per_s"], probe["inference_images_per_s"], render_speed(settings.data),
                 probe["threads"])


def format_duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s"


def describe(plan: Plan) -> str:
    """One line: the estimate, by stage."""
    parts = [f"{stage} {format_duration(plan.stage_seconds(stage))}" for stage in ("data", "pretrain", "scenarios")
             if any(p.stage == stage for p in plan.pieces)]
    scenarios = sum(p.name in plan.scenario_keys for p in plan.pieces)
    reused = f"; {len(plan.skipped)} finished scenario(s) reused" if plan.skipped else ""
    return (f"estimate: {format_duration(plan.total_seconds())} ({', '.join(parts) or 'nothing left to do'}; "
            f"{scenarios} scenario(s) on {plan.workers} worker(s){reused})")

