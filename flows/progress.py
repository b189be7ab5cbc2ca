"""The run's overall progress line: stage k of n, scenario i of m, elapsed, remaining.

The plan (reid_models.estimate) prices every piece of the run with this machine's probe; as pieces
finish, the remaining time is the plan's price of what is left, scaled by how the finished pieces
measured against their price (so a machine busier than its probe corrects itself).
"""

from __future__ import annotations

import logging
import threading
import time

from flows import STAGE_NAMES
from reid_models.config import Settings
from reid_models.estimate import SOURCE_MODEL, Plan, Speed, format_duration, plan_run, thin_pretraining
from reid_models.scenarios import expand_grid
from tasks.scenarios import outputs_present, small_dense_dir
from tasks.stages import source_checkpoint_path

log = logging.getLogger(__name__)


def finished_pieces(settings: Settings) -> set[str]:
    """Pieces of the run already on disk, which a re-run reuses."""
    done = {SOURCE_MODEL} if source_checkpoint_path(settings).is_file() else set()
    done |= {thin_pretraining(r) for r in settings.scenarios.flops_reductions
             if (small_dense_dir(settings, r) / "model.pt").is_file()}
    return done | {s.key for s in expand_grid(settings) if outputs_present(settings, s)}


def plan_for(settings: Settings, speed: dict) -> Plan:
    return plan_run(settings, Speed(**speed), finished_pieces(settings))


class Progress:
    """Logs one progress line whenever a stage starts or a piece finishes (thread-safe: scenarios
    finish in the task runner's threads)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.began = time.monotonic()
        self.stage = STAGE_NAMES[0]
        self.done: set[str] = set()
        self.scenarios_total = len(plan.scenario_keys)
        self.scenarios_done = len(plan.skipped)
        self._lock = threading.Lock()

    def start_stage(self, stage: str) -> None:
        with self._lock:
            self.stage = stage
            self._log()

    def finished(self, *pieces: str) -> None:
        with self._lock:
            # pieces reused from an earlier run, or not of this plan, change nothing
            new = [p for p in pieces if p not in self.done and p in {q.name for q in self.plan.pieces}]
            if not new:
                return
            self.done.update(new)
            self.scenarios_done += sum(p in self.plan.scenario_keys for p in new)
            self._log()

    def remaining_seconds(self) -> float:
        """The plan's price of what is left, corrected by finished pieces' measured/priced ratio."""
        left = Plan([p for p in self.plan.pieces if p.name not in self.done], self.plan.workers, self.plan.speed)
        priced_done = Plan([p for p in self.plan.pieces if p.name in self.done], self.plan.workers,
                           self.plan.speed).total_seconds()
        elapsed = time.monotonic() - self.began
        correction = elapsed / priced_done if priced_done > 60 else 1.0
        return left.total_seconds() * min(max(correction, 0.5), 3.0)

    def line(self) -> str:
        stage = STAGE_NAMES.index(self.stage) + 1
        elapsed, remaining = time.monotonic() - self.began, self.remaining_seconds()
        return (f"progress: stage {stage}/{len(STAGE_NAMES)} ({self.stage}), scenario "
                f"{self.scenarios_done}/{self.scenarios_total} done, elapsed {format_duration(elapsed)}, "
                f"remaining ~{format_duration(remaining)}")

    def _log(self) -> None:
        log.info(self.line())


# The run's progress, if it has one: the prune-adapt flow starts it and its subflow (same
# process: the grid's futures complete here whatever the task runner) reports to it.
_active: Progress | None = None


def start(settings: Settings, speed: dict | None) -> Progress | None:
    """Plan the run on this machine's `speed` and log the first line; None without a probe."""
    global _active
    _active = Progress(plan_for(settings, speed)) if speed else None
    if _active:
        _active.start_stage(STAGE_NAMES[0])
    return _active


def start_stage(stage: str) -> None:
    if _active:
        _active.start_stage(stage)


def finished(*pieces: str) -> None:
    if _active:
        _active.finished(*pieces)
