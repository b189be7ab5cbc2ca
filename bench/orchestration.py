"""What the orchestration costs, and what parallel workers buy.

    python -m bench.orchestration --json docs/bench/orchestration.json

On the quick profile, with the data and the source model made once beforehand and copied into
every run's fresh outputs folder (so each run trains the thin dense model and every scenario):

- overhead: the grid through the `prune-adapt` flow (Prefect tasks and subflow, a parent and a
  child MLflow run per scenario with artifacts and a Model Registry version, the report) vs the
  same grid by calling the core directly (what `bench.scenarios` does). Runs alternate
  core, flow, core, flow, ... (`--repeats`) so drift hits both; overhead = (flow - core) / core.
- cached re-run: the flow again with unchanged inputs, in this process, and as a new
  `reid-prune run` process (imports and Prefect's temporary server included).
- scenarios/hour: the grid with threads (1 worker, the default), threads (2 workers, 1 torch
  thread each) and a 2-worker Dask LocalCluster.

Everything it writes stays under outputs/bench/orchestration/ (its own MLflow DB and Prefect home).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("outputs/bench/orchestration").resolve()
# Prefect reads its home when first imported: the bench's cache records stay out of the project's.
os.environ["PREFECT_HOME"] = str(ROOT / "prefect")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from bench.scenarios import run_seed  # noqa: E402
from reid_models import stages  # noqa: E402
from reid_models.checkpoint import save_json  # noqa: E402
from reid_models.config import Settings, load_settings  # noqa: E402
from reid_models.report import save_results  # noqa: E402
from reid_models.scenarios import expand_grid  # noqa: E402


def overrides_for(name: str, *extra: str) -> list[str]:
    return [f"outputs={ROOT / name}", f"tracking.uri=sqlite:///{ROOT / 'mlflow.db'}",
            f"tracking.artifact_root={ROOT / 'artifacts'}", *extra]


class Bench:
    def __init__(self, params: str, profile: str, extra: list[str]):
        self.params, self.profile, self.extra = params, profile, extra

    def settings(self, name: str, *more: str) -> Settings:
        return load_settings(self.params, self.profile, overrides_for(name, *self.extra, *more))

    def prepare(self) -> Path:
        """Data and the source model, made once; every timed run starts from a copy."""
        settings = self.settings("shared")
        for domain in ("source", "target"):
            stages.prepare_domain(domain, getattr(settings.data, domain), settings.data, settings.seed)
        stages.pretrain(settings, ROOT / "shared" / "pretrain")
        return ROOT / "shared" / "pretrain"

    def fresh(self, name: str, pretrained: Path) -> None:
        shutil.rmtree(ROOT / name, ignore_errors=True)
        shutil.copytree(pretrained, ROOT / name / "pretrain")

    def core(self, name: str) -> float:
        settings = self.settings(name)
        began = time.perf_counter()
        rows = run_seed(settings)
        save_results(rows, ROOT / name / "report")
        return time.perf_counter() - began

    def flow(self, name: str, *more: str) -> float:
        from flows.prune_adapt import prune_adapt

        began = time.perf_counter()
        prune_adapt(profile=self.profile, overrides=overrides_for(name, *self.extra, *more), params=self.params)
        return time.perf_counter() - began

    def cli(self, name: str) -> float:
        command = [sys.executable, "-m", "flows.cli", "run", "--profile", self.profile, "--params", self.params]
        for override in overrides_for(name, *self.extra):
            command += ["-S", override]
        began = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=os.environ)
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=["quick", "default"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY.PATH=VALUE")
    parser.add_argument("--repeats", type=int, default=2, help="core/flow pairs for the overhead")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    bench = Bench(args.params, args.profile, args.overrides)
    grid_size = len(expand_grid(bench.settings("shared")))  # bad settings fail here
    shutil.rmtree(ROOT, ignore_errors=True)
    pretrained = bench.prepare()

    core_s, flow_s = [], []
    for repeat in range(args.repeats):
        for kind, run, times in (("core", bench.core, core_s), ("flow", bench.flow, flow_s)):
            name = f"{kind}{repeat}"
            bench.fresh(name, pretrained)
            times.append(run(name))
            print(f"{name}: {grid_size} scenarios in {times[-1]:.1f} s", flush=True)
    core_median, flow_median = statistics.median(core_s), statistics.median(flow_s)

    cached_in_process = bench.flow(f"flow{args.repeats - 1}")  # same inputs as the last flow run
    cached_new_process = bench.cli(f"flow{args.repeats - 1}")
    print(f"cached re-run: {cached_in_process:.1f} s in this process, {cached_new_process:.1f} s as a new process")

    runners = {"threads_1": (), "threads_2": ("orchestration.workers=2", "orchestration.torch_threads=1"),
               "dask_2": ("orchestration.task_runner=dask", "orchestration.workers=2",
                          "orchestration.torch_threads=1")}
    per_hour = {}
    for name, more in runners.items():
        if name == "threads_1":  # the default runner: the overhead runs already timed it
            per_hour[name] = 3600 * grid_size / flow_median
            continue
        bench.fresh(name, pretrained)
        seconds = bench.flow(name, *more)
        per_hour[name] = 3600 * grid_size / seconds
        print(f"{name}: {grid_size} scenarios in {seconds:.1f} s", flush=True)

    figures = {
        "profile": args.profile, "overrides": args.overrides, "scenarios": grid_size, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "core_s": core_s, "flow_s": flow_s,
        "overhead_fraction": (flow_median - core_median) / core_median,
        "overhead_s_per_scenario": (flow_median - core_median) / grid_size,
        "cached_rerun_s": cached_in_process, "cached_rerun_new_process_s": cached_new_process,
        "scenarios_per_hour": per_hour,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        save_json(args.json, figures)


if __name__ == "__main__":
    main()
