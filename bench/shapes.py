"""What shipping-friendly shapes cost in rank-1 on the new cameras.

    python -m bench.shapes --profile full --seeds 0,1,2 --json docs/bench/shapes_full.json

`bench.inference` found that ONNX Runtime (and, less, PyTorch) runs channel counts rounded to 16
much faster, and `bench.latency` that a 50% cut of batch-1 latency on this CPU takes about 70%
fewer FLOPs. This measures what each costs in accuracy: prune_during (supervised) at the default
50%-FLOPs budget, against the same with `prune.round_channels: 16` and against a 50% *latency*
budget (`prune.budget: latency`, aimed with the cached table alone: the timed corrections need an
idle machine; the achieved latency is measured afterwards with `bench.inference --checkpoints`). Same seeds and source models as `bench.scenarios` (the default
run is shared with it); comparisons paired within seeds (`bench.recovery.compare_pairs`) on the
target test and validation splits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bench.recovery import Run, compare_pairs, print_comparisons, run_seeds
from bench.scenarios import comparisons_path
from bench.settings_cli import settings_parser

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "round16": ["prune.round_channels=16"],
    # the table's aim alone: timing corrections need an idle machine, and benches run side by side
    "latency": ["prune.budget=latency", "prune.latency_corrections=0"],
}

PLAN: list[Run] = [
    Run("prune_during", "prune_during", "supervised"),
    Run("prune_during_round16", "prune_during", "supervised", "round16", versus="prune_during"),
    Run("prune_during_latency", "prune_during", "supervised", "latency", versus="prune_during"),
    Run("adapt_only", "adapt_only", "supervised"),
]


def main() -> None:
    parser = settings_parser(__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reduction", type=float, default=0.5, help="share of FLOPs (or latency) removed")
    parser.add_argument("--finished-only", action="store_true", help="collect finished runs, train nothing")
    parser.add_argument("--json", type=Path, help="rows here (after every seed), comparisons beside it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = run_seeds(args, PLAN, VARIANTS)
    records = compare_pairs(rows, [("supervised", run.label, run.versus, "shape") for run in PLAN if run.versus])
    if args.json:
        comparisons_path(args.json).write_text(json.dumps({"comparisons": records}, indent=2) + "\n")
    print(f"{'label':>24} {'seed':>4} {'rank1':>6} {'val_r1':>6} {'GFLOPs':>7} {'ms':>6}")
    for r in rows:
        print(f"{r['label']:>24} {r['seed']:>4} {100 * r['rank1']:>6.1f} {100 * r.get('val_rank1', float('nan')):>6.1f} "
              f"{r['flops'] / 1e9:>7.3f} {r.get('latency_ms', float('nan')):>6.2f}")
    print_comparisons(records, args.reduction)


if __name__ == "__main__":
    main()
