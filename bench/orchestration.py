"""What the orchestration costs, and what parallel workers buy.

    python -m bench.orchestration --json docs/bench/orchestration.json

On the quick profile, with the data and the source model made once beforehand and copied into
every run's fresh outputs folder (so each run trains the thin dense model and every scenario):

- overhead: the grid through the `prune-adapt` flow (Prefect tasks and subflow, a parent and a
  child MLflow run per scenario with artifacts and a Model Registry version, the report) vs the
  same grid by calling the core directly (what `bench.scenarios` does). Runs alternate
  core, flow, core, flow, ... so drift hits both. The first pair is reported apart (cold: the
  flow starts Prefect's temporary server and creates the MLflow tables); the `--repeats` pairs
  after it give overhead = (flow - core) / core on medians. Because two runs of the same
  scenarios differ by several percent on their own, the bench also reports the time each run
  spends outside the scenarios' own compute (wall time minus the scenarios' `seconds`): the
  difference of that between flow and core, per scenario, is the overhead with the scenario
  noise taken out.
- cached re-run: the flow again with unchanged inputs, in this process; as a new
  `reid-prune run` process (imports and Prefect's temporary server included); with the
  services of `make serve` running (on other ports), as a new process that talks to that
  Prefect server, and as `prefect deployment run prune-adapt/quick --watch`.
- scenarios/hour: the grid with threads (1 worker, the default), threads (2 workers, 1 torch
  thread each) and a 2-worker Dask LocalCluster.

Everything it writes stays under outputs/bench/orchestration/ (its own MLflow DB and Prefect home).
"""

from __future__ import annotations

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
from bench.settings_cli import settings_parser  # noqa: E402
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
            stages.prepare_domain(domain, getattr(settings.data, domain), settings.data)
        stages.pretrain(settings, ROOT / "shared" / "pretrain")
        return ROOT / "shared" / "pretrain"

    def fresh(self, name: str, pretrained: Path) -> None:
        shutil.rmtree(ROOT / name, ignore_errors=True)
        shutil.copytree(pretrained, ROOT / name / "pretrain")

    def core(self, name: str) -> tuple[float, float]:
        """Wall time of the grid, and the part of it spent outside the scenarios' own compute."""
        settings = self.settings(name)
        began = time.perf_counter()
        rows = run_seed(settings)
        save_results(rows, ROOT / name / "report")
        wall = time.perf_counter() - began
        return wall, wall - sum(row["seconds"] for row in rows)

    def flow(self, name: str, *more: str) -> tuple[float, float]:
        from flows.prune_adapt import prune_adapt

        began = time.perf_counter()
        result = prune_adapt(profile=self.profile, overrides=overrides_for(name, *self.extra, *more),
                             params=self.params)
        wall = time.perf_counter() - began
        return wall, wall - sum(row["seconds"] for row in result["rows"])

    def cli(self, name: str, env: dict | None = None) -> float:
        command = [sys.executable, "-m", "flows.cli", "run", "--profile", self.profile, "--params", self.params]
        for override in overrides_for(name, *self.extra):
            command += ["-S", override]
        began = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env or os.environ)
        return time.perf_counter() - began

    def served(self, name: str) -> dict[str, float]:
        """Cached re-runs with `make serve`'s three services up (ports 4210/5010, so a user's own
        `make serve` is left alone): a new process on that Prefect server, and the deployment."""
        from flows.services import Ports, start_services, stop_services

        ports, state_dir = Ports(prefect=4210, mlflow=5010), ROOT / "serve"
        began = time.perf_counter()
        start_services(self.settings(name), Path.cwd(), state_dir, ports)
        figures = {"services_start_s": time.perf_counter() - began}
        try:
            env = {**os.environ, "PREFECT_API_URL": ports.prefect_api}
            figures["cached_rerun_new_process_served_s"] = self.cli(name, env)
            command = [str(Path(sys.executable).parent / "prefect"), "deployment", "run",
                       f"prune-adapt/{self.profile}", "--params",
                       json.dumps({"overrides": overrides_for(name, *self.extra), "params": self.params}), "--watch"]
            began = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=env)
            figures["cached_rerun_deployment_s"] = time.perf_counter() - began
        finally:
            stop_services(state_dir)
        return figures


def main() -> None:
    parser = settings_parser(__doc__, default_profile="quick")
    parser.add_argument("--repeats", type=int, default=3, help="warm core/flow pairs for the overhead")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help=f"keep the runs' outputs in {ROOT} (several GB)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    bench = Bench(args.params, args.profile, args.overrides)
    grid_size = len(expand_grid(bench.settings("shared")))  # bad settings fail here
    shutil.rmtree(ROOT, ignore_errors=True)
    pretrained = bench.prepare()

    timed: dict[str, list[tuple[float, float]]] = {"core": [], "flow": []}
    for repeat in range(args.repeats + 1):  # pair 0 is the cold one
        for kind, run in (("core", bench.core), ("flow", bench.flow)):
            name = f"{kind}{repeat}"
            bench.fresh(name, pretrained)
            timed[kind].append(run(name))
            print(f"{name}: {grid_size} scenarios in {timed[kind][-1][0]:.1f} s "
                  f"({timed[kind][-1][1]:.1f} s outside the scenarios)", flush=True)
    core_s, flow_s = [wall for wall, _ in timed["core"]], [wall for wall, _ in timed["flow"]]
    core_median, flow_median = statistics.median(core_s[1:]), statistics.median(flow_s[1:])
    outside_core = statistics.median(outside for _, outside in timed["core"][1:])
    outside_flow = statistics.median(outside for _, outside in timed["flow"][1:])
    per_scenario = (outside_flow - outside_core) / grid_size
    scenario_s = (core_median - outside_core) / grid_size  # a scenario's own compute, on average

    last_flow = f"flow{args.repeats}"  # complete outputs: every task of a re-run hits the cache
    cached_in_process = bench.flow(last_flow)[0]
    cached_new_process = bench.cli(last_flow)
    served = bench.served(last_flow)
    print(f"cached re-run: {cached_in_process:.1f} s in this process, {cached_new_process:.1f} s as a new process, "
          f"{served['cached_rerun_new_process_served_s']:.1f} s on a running server, "
          f"{served['cached_rerun_deployment_s']:.1f} s as a deployment run")

    runners = {"threads_1": (), "threads_2": ("orchestration.workers=2", "orchestration.torch_threads=1"),
               "dask_2": ("orchestration.task_runner=dask", "orchestration.workers=2",
                          "orchestration.torch_threads=1")}
    per_hour = {}
    for name, more in runners.items():
        if name == "threads_1":  # the default runner: the overhead runs already timed it
            per_hour[name] = 3600 * grid_size / flow_median
            continue
        bench.fresh(name, pretrained)
        seconds = bench.flow(name, *more)[0]
        per_hour[name] = 3600 * grid_size / seconds
        print(f"{name}: {grid_size} scenarios in {seconds:.1f} s", flush=True)

    figures = {
        "profile": args.profile, "overrides": args.overrides, "scenarios": grid_size, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "core_s": core_s, "flow_s": flow_s, "cold_pair": {"core_s": core_s[0], "flow_s": flow_s[0]},
        "overhead_fraction": (flow_median - core_median) / core_median,
        "overhead_s_per_scenario": (flow_median - core_median) / grid_size,
        "outside_scenarios_s": {"core": outside_core, "flow": outside_flow},
        "scenario_compute_s": scenario_s,
        "overhead_outside_scenarios_s_per_scenario": per_scenario,
        "overhead_outside_scenarios_fraction": per_scenario / scenario_s,
        "cached_rerun_s": cached_in_process, "cached_rerun_new_process_s": cached_new_process, **served,
        "scenarios_per_hour": per_hour,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        save_json(args.json, figures)
    if not args.keep:
        shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
