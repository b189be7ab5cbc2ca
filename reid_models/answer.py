"""The answer a grid gives, in words: a winner only where its paired comparison is resolved after
Holm's correction (`stats`), "not resolved" otherwise. Read by the report (the run's three
sentences: console, Prefect artifact) and by `bench.scenarios` (every question of the grid).
"""

from __future__ import annotations

import statistics

from reid_models.scenario_kinds import PRUNING_STAGES
from reid_models.stats import setting_label, verdict_text


def mean_rank1(rows: list[dict], **match) -> float | None:
    values = [r["rank1"] for r in rows if all(r[k] == v for k, v in match.items())]
    return statistics.mean(values) if values else None


def claim_text(comparison: dict) -> str:
    """`A vs B +1.2 [+0.3, +2.7]: resolved, A better` or `...: not resolved` (rank-1 points;
    `stats.verdict_text`)."""
    verdict = verdict_text(comparison)
    return (f"{comparison['comparison']} {100 * comparison['diff']:+.1f} [{100 * comparison['ci_low']:+.1f}, "
            f"{100 * comparison['ci_high']:+.1f}]: {verdict}")


def stage_winner(stage_comparisons: list[dict]) -> str | None:
    """The stage resolved better than every other stage it was compared with (after Holm), if any."""
    labels = {c[side] for c in stage_comparisons for side in ("a", "b")}
    for label in sorted(labels):
        involved = [c for c in stage_comparisons if label in (c["a"], c["b"])]
        if len(involved) == len(labels) - 1 and all(
                c.get("resolved_holm", False) and c["winner"] == label for c in involved):
            return label
    return None


def answers(rows: list[dict], comparisons: list[dict]) -> list[str]:
    """The questions the grid answers, on target rank-1: a winner only where its paired comparison
    is resolved after Holm's correction, otherwise "not resolved"."""
    lines = []
    rank1 = [c for c in comparisons if c["metric"] == "rank1"]
    for mode in sorted({r["adaptation"] for r in rows} - {"none"}):
        reference = mean_rank1(rows, name="adapt_only", adaptation=mode)
        for reduction in sorted({c["flops_reduction"] for c in rank1 if c["adaptation"] == mode} - {0.0}):
            group = [c for c in rank1 if c["adaptation"] == mode and c["flops_reduction"] == reduction]
            where = f"{mode} @ -{reduction:g} FLOPs"
            stage_comparisons = [c for c in group if c["kind"] == "stages"]
            for criterion in sorted({c["a"].split("[")[-1].rstrip("]") for c in stage_comparisons}):
                same = [c for c in stage_comparisons if c["a"].endswith(f"[{criterion}]")]
                winner = stage_winner(same)
                means = {}
                for c in same:
                    means[c["a"]], means[c["b"]] = c["mean_a"], c["mean_b"]
                lines.append(f"{where}, where to prune: " + (f"{winner} (resolved against every other stage)" if winner
                             else "not resolved (" + ", ".join(f"{k} {100 * v:.1f}" for k, v in means.items()) + ")"))
            for kind, title in (("vs_small_dense", "prune or train small"), ("vs_plfp", "criterion vs PLFP"),
                                ("vs_adapt_short", "vs adaptation at the same epochs"),
                                ("vs_adapt_only", f"vs adapt_only ({100 * reference:.1f})" if reference is not None
                                 else "vs adapt_only")):
                claims = [claim_text(c) for c in group if c["kind"] == kind]
                if claims:
                    lines.append(f"{where}, {title}: " + "; ".join(claims))
        unpruned = [c for c in rank1 if c["adaptation"] == mode and c["flops_reduction"] == 0.0]
        if unpruned:
            lines.append(f"{mode}, adaptation: " + "; ".join(claim_text(c) for c in unpruned))
    source_only = mean_rank1(rows, name="source_only")
    supervised = mean_rank1(rows, name="adapt_only", adaptation="supervised")
    unsupervised = mean_rank1(rows, name="adapt_only", adaptation="unsupervised")
    if None not in (source_only, supervised, unsupervised) and supervised > source_only:
        closed = (unsupervised - source_only) / (supervised - source_only)
        lines.append(f"direct transfer {100 * source_only:.1f} -> unsupervised {100 * unsupervised:.1f} "
                     f"(supervised {100 * supervised:.1f}), means over seeds: unsupervised closes {100 * closed:.0f}% "
                     "of the gap")
    return lines


def headline(rows: list[dict], comparisons: list[dict], how_sure: str | None) -> list[str]:
    """The run's answer in three sentences (means over seeds, target rank-1): the best model at the
    run's largest FLOPs cut (pruned or thin) against the unpruned one, where to prune (among the
    best stage's criterion's stages; a stage only where it is resolved against every other after
    Holm), and how small a difference the run can see."""
    modes = [m for m in ("supervised", "unsupervised") if any(r["adaptation"] == m for r in rows)]
    pruned = [r for r in rows if r["flops_reduction"] > 0 and r["adaptation"] in modes]
    if not pruned:
        return ["No pruned scenario finished: nothing to compare."]
    mode, reduction = modes[0], max(r["flops_reduction"] for r in pruned if r["adaptation"] == modes[0])
    settings = {(r["name"], r["criterion"]) for r in pruned if r["adaptation"] == mode and r["flops_reduction"] == reduction}
    means = {s: mean_rank1(rows, name=s[0], criterion=s[1], adaptation=mode, flops_reduction=reduction) for s in settings}
    (name, criterion), best = max(means.items(), key=lambda item: item[1])
    gflops = statistics.mean(r["flops"] for r in pruned if r["name"] == name and r["adaptation"] == mode) / 1e9
    unpruned = mean_rank1(rows, name="adapt_only", adaptation=mode)
    first = (f"At -{100 * reduction:.0f}% FLOPs ({mode} adaptation), the best model is {setting_label(name, criterion)}: "
             f"rank-1 {100 * best:.1f}% at {gflops:.2f} GFLOPs"
             + (f", against {100 * unpruned:.1f}% unpruned (adapt_only)." if unpruned is not None else "."))
    staged = {s: value for s, value in means.items() if s[0] in PRUNING_STAGES}
    stage_criterion = max(staged.items(), key=lambda item: item[1])[0][1] if staged else None  # the best stage's
    stage_comparisons = [c for c in comparisons if c["metric"] == "rank1" and c["kind"] == "stages"
                         and c["adaptation"] == mode and c["flops_reduction"] == reduction
                         and c["a"].endswith(f"[{stage_criterion}]")]
    winner = stage_winner(stage_comparisons) if stage_comparisons else None
    stage_means = {}
    for c in stage_comparisons:
        stage_means[c["a"]], stage_means[c["b"]] = c["mean_a"], c["mean_b"]
    shown = ", ".join(f"{label} {100 * value:.1f}" for label, value in sorted(stage_means.items(), key=lambda i: -i[1]))
    if winner:
        second = f"Where to prune: {winner}, resolved against every other stage after Holm's correction ({shown})."
    elif stage_comparisons and max(c["n_seeds"] for c in stage_comparisons) < 2:
        second = (f"Where to prune: not resolved ({shown}): one seed is never called resolved; add seeds "
                  "(scenarios.seeds=[0,1,2]).")
    elif stage_comparisons:
        second = f"Where to prune: not resolved by this run ({shown}); no stage is ahead of every other after Holm."
    elif len({r["name"] for r in pruned if r["adaptation"] == mode and r["flops_reduction"] == reduction
              and r["name"] in PRUNING_STAGES}) < 2:
        second = "Where to prune: not compared (this grid runs fewer than two pruning stages)."
    else:
        second = "Where to prune: not compared (no per-query results to pair the stages on)."
    third = f"How sure: {how_sure}" if how_sure else "How sure: one seed, so no difference is called resolved."
    return [first, second, third]
