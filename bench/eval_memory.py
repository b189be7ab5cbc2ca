"""Peak memory of a large evaluation straight from features (no full distance matrix).

    python -m bench.eval_memory --queries 20000 --gallery 20000 --json docs/bench/eval_memory.json

Reports the whole process's peak resident memory (VmHWM: Python, torch, the features and the
evaluation together) and the evaluation's wall time. Target: under 2 GB for 20k x 20k.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.eval_speed import make_market_like
from reid_models.evaluate import evaluate_features


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--gallery", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = make_market_like(args.queries, args.gallery, args.dim, seed=0, num_ids=3000)
    before = peak_rss_mb()
    began = time.perf_counter()
    metrics = evaluate_features(data["query_features"], data["gallery_features"], data["q_pids"], data["g_pids"],
                                data["q_camids"], data["g_camids"])
    result = {"queries": args.queries, "gallery": args.gallery, "dim": args.dim,
              "seconds": round(time.perf_counter() - began, 2), "process_peak_mb": round(peak_rss_mb(), 1),
              "peak_before_evaluation_mb": round(before, 1),
              "dense_distance_matrix_mb": round(args.queries * args.gallery * 4 / 2**20, 1),
              "rank1": metrics["rank1"], "mAP": metrics["mAP"]}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
