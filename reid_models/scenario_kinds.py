"""The kinds of scenario the grid runs, in one place: what each does to the source model, and so
which settings it reads and which comparisons it enters. The config's allowed names, the grid's
expansion, the fingerprint, the estimate and the statistics' stage comparisons all read this
table; the steps each kind runs are `scenarios.STEPS`, keyed by the same names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScenarioKind:
    name: str
    does: str
    adapts: bool = True  # trains on the target (supervised or unsupervised); else evaluated as it is
    prunes: bool = False  # with each of the grid's criteria, at each of its FLOPs cuts
    prunes_on_target: bool = False  # prunes while it trains on the target (not on the source first)
    thin: bool = False  # a thinner dense network with the FLOPs of each cut, trained from scratch


KINDS = (
    ScenarioKind("source_only", "the source model on the new cameras, no adaptation (direct transfer)", adapts=False),
    ScenarioKind("adapt_only", "adapt the unpruned model for the whole budget (the accuracy to keep)"),
    ScenarioKind("adapt_short", "adapt the unpruned model for the adaptation epochs of before/after (their control)"),
    ScenarioKind("prune_before", "prune on the source, then adapt the pruned model", prunes=True),
    ScenarioKind("prune_during", "prune progressively while adapting", prunes=True, prunes_on_target=True),
    ScenarioKind("prune_after", "adapt, then prune and recover on the target", prunes=True, prunes_on_target=True),
    ScenarioKind("small_dense", "a thinner dense network pretrained on the source, then adapted", thin=True),
)
BY_NAME = {kind.name: kind for kind in KINDS}
SCENARIO_NAMES = tuple(BY_NAME)
PRUNING_STAGES = tuple(kind.name for kind in KINDS if kind.prunes)  # the stages compared with each other
TARGET_PRUNING = tuple(kind.name for kind in KINDS if kind.prunes_on_target)
