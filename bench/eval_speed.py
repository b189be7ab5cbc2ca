"""How fast is our ReID evaluation compared with torchreid's python reference, on Market-1501 scale?

    python -m bench.eval_speed --json OUT [--queries 3368 --gallery 15913 --dim 512 --seed 0]

Builds random features with Market-1501's structure (750 test identities, each seen by 2-6 of 6
cameras, ~17% distractor gallery images with pid 0), computes one distance matrix, then times
`evaluate_distances` (best of --repeats) and torchreid's `evaluate_rank(use_cython=False)` (one
run, it is slow) on that same matrix with time.perf_counter.

Memory: torch allocations are invisible to tracemalloc, so `ours_peak_mb` is measured on the whole
process in a fresh subprocess that loads the saved matrix and labels, resets the kernel's peak-RSS
mark (writing 5 to /proc/self/clear_refs), runs `evaluate_distances` once and reads VmHWM - VmRSS
before the call. Where clear_refs is not allowed it falls back to ru_maxrss minus the RSS before
the call (an upper bound that is exact when loading was the peak so far). `memory_method` says
which was used. It is the memory *added* by evaluation, not counting the input matrix.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from reid_models.evaluate import evaluate_distances, pairwise_distances

log = logging.getLogger(__name__)

LABELS = ("q_pids", "g_pids", "q_camids", "g_camids")
COMPARED = ("rank1", "rank5", "rank10", "mAP")


def make_market_like(
    num_query: int, num_gallery: int, dim: int, seed: int, num_ids: int = 750,
    cameras: int = 6, distractor_share: float = 0.175, noise: float = 2.0,
) -> dict[str, np.ndarray]:
    """Features = identity centre + camera bias + per-image noise, with Market-1501-like labels."""
    rng = np.random.default_rng(seed)
    # Each identity walks past 2..6 cameras; a sample's camera is drawn from its identity's set.
    seen_by = np.zeros((num_ids + 1, cameras), dtype=bool)
    for pid in range(num_ids + 1):
        seen_by[pid, rng.choice(cameras, size=rng.integers(2, cameras + 1), replace=False)] = True

    def cameras_for(pids: np.ndarray) -> np.ndarray:
        return np.argmax(seen_by[pids] * rng.random((len(pids), cameras)), axis=1)

    num_distractors = int(round(distractor_share * num_gallery))
    # Every identity appears (np.resize cycles the ids), in random order; ids start at 1.
    g_pids = rng.permutation(np.resize(np.arange(1, num_ids + 1), num_gallery - num_distractors))
    g_pids = np.concatenate([g_pids, np.zeros(num_distractors, dtype=g_pids.dtype)])
    q_pids = rng.permutation(np.resize(np.arange(1, num_ids + 1), num_query))
    q_camids, g_camids = cameras_for(q_pids), cameras_for(g_pids)

    centres = rng.standard_normal((num_ids + 1, dim), dtype=np.float32)
    camera_bias = 0.5 * rng.standard_normal((cameras, dim), dtype=np.float32)

    def features(pids: np.ndarray, cams: np.ndarray) -> np.ndarray:
        out = centres[pids] + camera_bias[cams]
        out += noise * rng.standard_normal(out.shape, dtype=np.float32)
        return out

    g_features = features(g_pids, g_camids)
    # Distractors are each somebody else: their own random centre instead of pid 0's.
    g_features[g_pids == 0] += rng.standard_normal((num_distractors, dim), dtype=np.float32)
    return {
        "query_features": features(q_pids, q_camids), "gallery_features": g_features,
        "q_pids": q_pids, "g_pids": g_pids, "q_camids": q_camids, "g_camids": g_camids,
    }


# --------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_child(folder: Path) -> None:
    """Run in a fresh process: peak extra RSS of one evaluate_distances call, printed as JSON."""
    distmat = np.load(folder / "distmat.npy")
    labels = {name: np.load(folder / f"{name}.npy") for name in LABELS}
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS
        method = "VmHWM after clear_refs, subprocess"
    except OSError:
        method = "ru_maxrss minus RSS before, subprocess"
    before_kb = _status_kb("VmRSS")
    evaluate_distances(distmat, **labels)
    if method.startswith("VmHWM"):
        peak_kb = _status_kb("VmHWM")
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_mb": (peak_kb - before_kb) / 1024, "method": method}))


def measure_peak_mb(distmat: np.ndarray, labels: dict[str, np.ndarray]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "distmat.npy", distmat)
        for name in LABELS:
            np.save(folder / f"{name}.npy", labels[name])
        done = subprocess.run(
            [sys.executable, "-m", "bench.eval_speed", "--measure-child", str(folder)],
            capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["peak_mb"], result["method"]


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours; the best is kept")
    parser.add_argument("--measure-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_child:
        _measure_child(args.measure_child)
        return {}
    if args.json is None:
        parser.error("--json is required")

    data = make_market_like(args.queries, args.gallery, args.dim, args.seed)
    labels = {name: data[name] for name in LABELS}
    distmat = pairwise_distances(data["query_features"], data["gallery_features"])

    ours_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = evaluate_distances(distmat, **labels)
        ours_times.append(time.perf_counter() - start)

    from torchreid.reid.metrics.rank import evaluate_rank  # slow import; warns about cython

    start = time.perf_counter()
    cmc, mAP = evaluate_rank(distmat, *(labels[name] for name in LABELS), max_rank=50,
                             use_cython=False)
    torchreid_s = time.perf_counter() - start
    reference = {"rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9], "mAP": mAP}

    peak_mb, method = measure_peak_mb(distmat, labels)
    ours_s = min(ours_times)
    result = {
        "ours_s": ours_s,
        "torchreid_s": torchreid_s,
        "speedup": torchreid_s / ours_s,
        "ours_peak_mb": peak_mb,
        "max_abs_diff": max(abs(ours[key] - float(reference[key])) for key in COMPARED),
        "queries": args.queries,
        "gallery": args.gallery,
        "dim": args.dim,
        "threads": torch.get_num_threads(),
        "memory_method": method,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{args.queries} queries x {args.gallery} gallery, {torch.get_num_threads()} threads: "
          f"rank1 {ours['rank1']:.4f}  mAP {ours['mAP']:.4f}  mINP {ours['mINP']:.4f}")
    print(f"ours {ours_s:.2f} s (best of {args.repeats}), torchreid {torchreid_s:.2f} s, "
          f"speedup {result['speedup']:.1f}x, max |diff| {result['max_abs_diff']:.2e}, "
          f"peak extra {peak_mb:.0f} MB")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="Cython evaluation")
    main()
