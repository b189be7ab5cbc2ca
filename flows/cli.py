"""`reid-prune`: the command line. Heavy imports happen inside commands so `--help` is instant."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import flows  # sets telemetry-off environment before Prefect/MLflow load

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prune a person ReID model for a new camera domain, with evidence.\n\n"
                       "Example: reid-prune doctor; reid-prune run --profile quick; reid-prune report")
# Long paths in errors stay on one line; piped output (CI, logs) gets room for the metrics table.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)

ProfileOption = Annotated[Optional[str], typer.Option("--profile", "-p", help="profile from params.yaml (default, quick)")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="override: KEY.PATH=VALUE, repeatable")]
ParamsOption = Annotated[str, typer.Option("--params", help="settings file")]


# Loggers whose INFO lines the user reads; everything else (faiss's loader, torchreid's Cython
# warning, Prefect's engine and crash reports) goes only to the log file unless --verbose.
OUR_LOGGERS = ("reid_models", "tasks", "flows", "bench", "__main__")
QUIET_LIBRARIES = ("httpx", "httpcore", "prefect", "alembic", "mlflow", "faiss", "torchreid", "py.warnings")


class Options:
    """The global options, set by `main` before any command runs."""
    verbose = False
    debug = False


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if Options.verbose:
            return True
        if record.name.startswith(OUR_LOGGERS):
            return True
        return record.levelno >= logging.WARNING and not record.name.startswith(QUIET_LIBRARIES)


def _setup_logging() -> None:
    """Our progress on the console at INFO; library chatter only with --verbose (and in the log file)."""
    logging.captureWarnings(True)  # warnings.warn (torchreid's Cython notice) become log records
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ConsoleFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _log_to_file(outputs: str) -> Path:
    """Every record (libraries' too) into outputs/logs/reid-prune-<time>.log; returns its path."""
    import time

    path = Path(outputs) / "logs" / f"reid-prune-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s"))
    logging.getLogger().addHandler(handler)
    console.print(f"log: {path}", style="dim")
    return path


def _fail(error: Exception) -> None:
    """One line: what went wrong, where, how to fix (the exception's message); the traceback
    only with --debug."""
    if Options.debug:
        console.print_exception()
    console.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[Exception], ...]:
    from reid_models.checkpoint import CheckpointError, DiskFullError
    from reid_models.config import SettingsError
    from reid_models.data.readers import DataError

    return SettingsError, DataError, CheckpointError, DiskFullError


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the work at its next batch: the flag stops the scenario threads,
    the exception unwinds this (main) thread. Later signals (Prefect sends SIGTERM again as it
    leaves a flow run) are ignored, so the unwinding can mark the MLflow runs KILLED."""
    from reid_models import signals

    def handler(signal_number: int, _frame) -> None:
        if signals.stop_requested() is not None:
            return
        console.print(f"\n{signal.Signals(signal_number).name}: stopping at the next batch...", style="bold")
        signals.request_stop(signal_number)
        raise signals.StopRequested(signal_number)

    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, handler)


def _stopped_by(error: BaseException) -> int | None:
    """The signal behind an exception that ended the work, if the user asked to stop."""
    from reid_models import signals

    number = signals.stop_requested()
    if number is None and isinstance(error, (KeyboardInterrupt, signals.StopRequested)):
        number = getattr(error, "signal_number", signal.SIGINT)
    if number is None and type(error).__name__ == "TerminationSignal":  # Prefect's, raised in a flow run
        number = error.signal
    return number


def _report_stop(number: int, outputs: str | None) -> None:
    from reid_models.signals import exit_code

    if outputs is None:
        console.print(f"stopped ({signal.Signals(number).name}) before any work started.", style="bold")
        raise typer.Exit(code=exit_code(number))
    console.print(f"stopped ({signal.Signals(number).name}). Kept under {outputs}/: every finished stage and "
                  "scenario, and the last finished epoch of each running one (MLflow runs marked KILLED). "
                  "Run the same command again to resume.", style="bold")
    raise typer.Exit(code=exit_code(number))


def _use_temporary_prefect_server() -> None:
    """Without `make serve`, a Prefect server of this command's own that dies with it, even by
    SIGKILL (flows/temporary_server.py). Must run before Prefect is imported."""
    from flows import temporary_server

    if "PREFECT_API_URL" in os.environ or not temporary_server.supported():
        return
    try:
        temporary_server.start(Path(os.environ["PREFECT_HOME"]))
    except temporary_server.TemporaryServerError as error:
        _fail(error)


def _results_table(frame) -> Table:
    """One row per scenario setting (mean over seeds): cost and target-domain ReID metrics (percent)."""
    from reid_models.report import summary_over_seeds

    table = Table(title="Where to prune: scenarios on the target cameras (Market-1501 protocol)",
                  caption="rank/mAP/mINP on the target test split (new cameras, unseen identities); "
                          "src r1: source test rank-1; images: training images seen after pretraining")
    shipped = bool("shipped_rank1" in frame and frame["shipped_rank1"].notna().all())
    columns = ("scenario", "criterion", "FLOPs -", "adaptation", "GFLOPs", "params (M)", "latency (ms)", "rank1",
               "mAP", "mINP", "src r1", "images", "seeds") + (("ship r1", "ship MB", "ship ms") if shipped else ())
    if shipped:
        table.caption += f"; ship: the {frame['shipped_as'].iloc[0]} file under ONNX Runtime (rank-1, size, batch-1 ms)"
    for column in columns:
        text = column in ("scenario", "criterion", "adaptation")
        # names are what the reader scans for: never cut them; headers of numbers may wrap instead
        table.add_column(column, justify="left" if text else "right", no_wrap=text, min_width=12 if text else None)
    for row in summary_over_seeds(frame).itertuples():
        spread = f" ({100 * row.rank1_min:.1f}-{100 * row.rank1_max:.1f})" if row.seeds > 1 else ""
        cells = [row.scenario, row.criterion, f"{row.flops_reduction:g}", row.adaptation, f"{row.gflops:.3f}",
                 f"{row.params_m:.2f}", f"{row.latency_ms:.1f}", f"{100 * row.rank1:.1f}{spread}",
                 f"{100 * row.mAP:.1f}", f"{100 * row.mINP:.1f}", f"{100 * row.source_rank1:.1f}",
                 str(int(row.images_seen)), str(int(row.seeds))]
        if shipped:
            cells += [f"{100 * row.shipped_rank1:.1f}", f"{row.shipped_size_bytes / 1e6:.1f}",
                      f"{row.shipped_latency_ms:.1f}"]
        table.add_row(*cells)
    return table


def _shipped_table(shipped) -> Table:
    """With several `ship.quantize` choices: each final model as each shipped file (mean over seeds)."""
    table = Table(title="As shipped: each final model under ONNX Runtime, per ship.quantize choice",
                  caption="pytorch r1: the model before export; r1/mAP on the target test split; "
                          "ms: batch-1 latency; img/s: batch-32 throughput")
    keys = ["scenario", "criterion", "flops_reduction", "adaptation", "shipped_as"]
    columns = ("scenario", "criterion", "FLOPs -", "adaptation", "shipped as", "pytorch r1", "r1", "mAP", "MB", "ms",
               "img/s")
    for column in columns:
        text = column in ("scenario", "criterion", "adaptation", "shipped as")
        table.add_column(column, justify="left" if text else "right", no_wrap=text)
    means = shipped.groupby(keys, sort=False, as_index=False)[
        ["pytorch_rank1", "shipped_rank1", "shipped_mAP", "shipped_mb", "shipped_latency_ms",
         "shipped_throughput_ips"]].mean()
    for row in means.itertuples():
        table.add_row(row.scenario, row.criterion, f"{row.flops_reduction:g}", row.adaptation, row.shipped_as,
                      f"{100 * row.pytorch_rank1:.1f}", f"{100 * row.shipped_rank1:.1f}",
                      f"{100 * row.shipped_mAP:.1f}", f"{row.shipped_mb:.1f}", f"{row.shipped_latency_ms:.1f}",
                      f"{row.shipped_throughput_ips:.0f}")
    return table


def _print_results(settings, paths: dict) -> None:
    import pandas as pd

    from reid_models.answer import headline
    from reid_models.report import load_comparisons, load_resolution, load_results
    from tasks.tracking import ui_command, ui_url

    report_dir = Path(paths["csv"]).parent
    results = load_results(report_dir)
    console.print(_results_table(results))
    shipped_csv = Path(paths["csv"]).with_name("shipped.csv")
    if shipped_csv.is_file() and (shipped := pd.read_csv(shipped_csv))["shipped_as"].nunique() > 1:
        console.print(_shipped_table(shipped))
    console.print(f"results: {paths['csv']}   plot: {paths['plot']}   summary: {paths['summary']}")
    if resolution := load_resolution(report_dir):
        console.print(f"How sure: {resolution['line']}")
    comparisons = load_comparisons(report_dir)
    for sentence in headline(results.rename(columns={"scenario": "name"}).to_dict("records"),
                             [] if comparisons is None else comparisons.to_dict("records"),
                             resolution["line"] if resolution else None)[:2]:  # the third is "How sure" above
        console.print(sentence, style="bold", markup=False)
    console.print(f"MLflow UI: [bold]{ui_command(settings)}[/]  then open {ui_url(settings)}")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show libraries' log lines")] = False,
         debug: Annotated[bool, typer.Option("--debug", help="show the traceback of an error")] = False) -> None:
    Options.verbose, Options.debug = verbose, debug


@app.command(epilog="Example: reid-prune doctor --seconds 10")
def doctor(seconds: Annotated[float, typer.Option(help="length of the speed probe")] = 10.0,
           profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """This machine: versions, cores, threads, CUDA, free disk, and its training speed (images/s).

    Give the probe's training images/s with any timing: machines of one kind differ up to 3x."""
    import importlib.metadata
    import platform
    import shutil

    import torch

    from reid_models.speed_probe import probe_speed

    _setup_logging()
    settings = _checked_settings(profile, set_, params)
    versions = {name: importlib.metadata.version(name) for name in
                ("torch", "torchvision", "torchreid", "torch-pruning", "faiss-cpu", "prefect", "mlflow", "dvc")}
    console.print(f"python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    cores = _usable_cores()
    threads = settings.orchestration.torch_threads
    console.print(f"cores: {cores} usable of {os.cpu_count()}; torch threads {torch.get_num_threads()} "
                  f"(the pipeline uses {threads}: orchestration.torch_threads)")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    console.print(f"CUDA: {cuda}; device setting: {settings.device}")
    outputs = Path(settings.outputs).resolve()
    existing = next(p for p in (outputs, *outputs.parents) if p.exists())
    console.print(f"free disk at {outputs}: {shutil.disk_usage(existing).free / 2**30:.1f} GiB")
    _print_probe(probe_speed(settings, seconds, threads=_usable_cores()))  # all cores: the machine, not one worker


@app.command(epilog="Example: reid-prune run --profile quick -S scenarios.seeds=[0,1]")
def run(profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml",
        probe_seconds: Annotated[float, typer.Option(help="speed probe before the run (0: no probe, no "
                                                           "estimate)")] = 8.0) -> None:
    """Run the prune-adapt flow on the settings in params.yaml (the embedded synthetic benchmark by default).

    It first probes this machine's speed and prints an estimate of the run's duration; a progress
    line (stage, scenarios done, elapsed, remaining) follows as the run goes."""
    _setup_logging()
    _stop_on_signals()
    outputs = None  # a stop before the settings are read has kept nothing
    try:
        settings = _checked_settings(profile, set_, params, inputs=True)  # fail fast, before Prefect starts
        outputs = settings.outputs
        _log_to_file(settings.outputs)
        if flows.SERVED_PREFECT_API:
            console.print(f"Prefect: reporting to the running `make serve` server ({flows.SERVED_PREFECT_API})")
        speed = _probe(settings, probe_seconds) if probe_seconds > 0 else None
        _use_temporary_prefect_server()
        if speed:
            _print_estimate(settings, speed)
        from flows.prune_adapt import ScenariosFailed, prune_adapt

        try:
            result = prune_adapt(profile=profile, overrides=set_ or [], params=params, speed=speed)
        except ScenariosFailed as error:  # the others finished: their table, then the failures, exit 1
            if error.paths:
                _print_results(settings, error.paths)
            console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(code=1)
    except _user_errors() as error:
        _fail(error)
    except BaseException as error:  # a signal (at any point: the probe, the imports, the flow) or a bug
        if (number := _stopped_by(error)) is None:
            raise
        _report_stop(number, outputs)
    _print_results(settings, result["paths"])


@app.command(epilog="Example: reid-prune estimate --profile full")
def estimate(profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml",
             probe_seconds: Annotated[float, typer.Option(help="length of the speed probe")] = 8.0) -> None:
    """Probe this machine and print how long `reid-prune run` would take on these settings; run nothing.

    A fresh `make run` calls it between the two halves of its set-up (as `python -m flows.cli estimate`),
    before Prefect is installed; then nothing on disk is counted as finished."""
    _setup_logging()
    settings = _checked_settings(profile, set_, params)
    _print_estimate(settings, _probe(settings, probe_seconds))


def _print_probe(speed: dict) -> None:
    console.print(f"probe ({speed['model']} {speed['height']}x{speed['width']}, batch {speed['batch']}, "
                  f"{speed['threads']} threads, CPU): training {speed['train_images_per_s']:.0f} images/s, "
                  f"inference {speed['inference_images_per_s']:.0f} images/s")


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _probe(settings, seconds: float) -> dict:
    """The machine's probe (all cores: the figure timings are given with), then the probe at the
    pipeline's threads per worker, which prices the run (reid_models.estimate.Speed fields)."""
    from reid_models.estimate import measure_speed
    from reid_models.speed_probe import probe_speed

    _print_probe(probe_speed(settings, seconds / 2, threads=_usable_cores()))
    speed = measure_speed(settings, seconds / 2)
    console.print(f"per worker ({speed.threads} thread(s)): training {speed.train:.0f} images/s, inference "
                  f"{speed.inference:.0f} images/s; rendering {speed.render:.0f} images/s")
    return speed.as_dict()


def _print_estimate(settings, speed: dict) -> None:
    import importlib.util

    from reid_models.estimate import Speed, describe, plan_run

    if importlib.util.find_spec("prefect") is None:  # `make run`'s set-up is half done
        plan = plan_run(settings, Speed(**speed))
        note = " (before the set-up's second half, about 2 min; counting nothing on disk as finished)"
    else:
        from flows.progress import plan_for  # imports Prefect: after the temporary server is up

        plan, note = plan_for(settings, speed), ""
    console.print(describe(plan) + note, style="bold")


def _checked_settings(profile: str | None, overrides: list[str] | None, params: str, inputs: bool = False):
    """params.yaml with the overrides, checked as the flows check it (without importing Prefect);
    with `inputs`, every path the run reads or writes too (reid_models.preflight), in seconds."""
    from reid_models.config import load_settings

    try:
        settings = load_settings(params, profile, overrides or [])
        if inputs:  # before check_budget: its imports (the whole pipeline) take seconds more
            from reid_models.preflight import check_run_inputs

            check_run_inputs(settings)
        from reid_models.scenarios import check_budget

        check_budget(settings)
    except (*_user_errors(), ValueError) as error:
        _fail(error)
    return settings


def _comparisons_table(frame) -> Table:
    """Paired differences A - B over seeds (points), their 95% interval, and the verdict after
    Holm's correction within each table (`stats.verdict_text`)."""
    from reid_models.stats import verdict_text

    table = Table(title="Paired comparisons on the target test split (A - B, points; 95% interval over seeds and "
                        "query identities; verdicts Holm-adjusted per adaptation, kind and metric)")
    for column in ("comparison", "adaptation", "FLOPs -", "metric", "A - B", "95% CI", "per seed", "seeds", "verdict"):
        text = column in ("comparison", "adaptation", "metric", "per seed", "verdict")
        table.add_column(column, justify="left" if text else "right", no_wrap=column == "comparison")
    from rich.markup import escape  # labels such as prune_during[plfp] are not markup

    for row in frame.itertuples():
        verdict = verdict_text(row._asdict())
        cells = (row.comparison, row.adaptation, f"{row.flops_reduction:g}", row.metric, f"{100 * row.diff:+.1f}",
                 f"[{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}]",
                 " ".join(f"{100 * d:+.1f}" for d in row.per_seed), str(row.n_seeds), verdict)
        table.add_row(*(escape(cell) for cell in cells))
    return table


@app.command(epilog="Example: reid-prune report --profile quick")
def report(profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Print the last run's results table and where its plot is."""
    from flows.prune_adapt import settings_for
    from tasks.scenarios import report_dir

    try:
        settings = settings_for(profile, set_, params)
    except (*_user_errors(), ValueError) as error:
        _fail(error)
    folder = report_dir(settings)
    if not (folder / "results.csv").is_file():
        _fail(FileNotFoundError(f"no results in {folder}; run `reid-prune run` (or `dvc repro`) first"))
    _print_results(settings, {kind: str(folder / name) for kind, name in
                              (("csv", "results.csv"), ("plot", "flops_vs_rank1.png"), ("summary", "summary.csv"))})
    from reid_models.report import load_comparisons

    comparisons = load_comparisons(folder)
    if comparisons is not None:
        console.print(_comparisons_table(comparisons))
        console.print(f"comparisons: {folder / 'comparisons.csv'}")


@app.command(epilog="Example: reid-prune stage pretrain   (what `dvc repro` runs)")
def stage(name: Annotated[str, typer.Argument(help="data | pretrain | scenarios | report")],
          profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Run one stage as its own flow (what dvc.yaml calls)."""
    _setup_logging()
    _stop_on_signals()
    if os.environ.get("DVC_STAGE"):  # run by `dvc repro`: stop with it, even when it alone is signalled
        from reid_models.signals import nearest_dvc_ancestor, stop_with_parent, stop_with_process

        stop_with_parent()  # the shell dvc runs us through, or dvc itself
        if (dvc := nearest_dvc_ancestor()) is not None:
            stop_with_process(dvc)  # dvc itself, when a shell that did not exec sits between
    if name not in flows.STAGE_NAMES:
        _fail(ValueError(f"unknown stage {name!r}; valid: {', '.join(flows.STAGE_NAMES)}"))
    outputs = None
    try:
        settings = _checked_settings(profile, set_, params, inputs=True)
        outputs = settings.outputs
        _log_to_file(settings.outputs)
        _use_temporary_prefect_server()
        from flows.prune_adapt import STAGE_FLOWS, ScenariosFailed

        try:
            result = STAGE_FLOWS[name](profile=profile, overrides=set_ or [], params=params)
        except ScenariosFailed as error:
            console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(code=1)
    except (*_user_errors(), FileNotFoundError) as error:
        _fail(error)
    except BaseException as error:
        if (number := _stopped_by(error)) is None:
            raise
        _report_stop(number, outputs)
    if name == "report":
        _print_results(settings, result["paths"])


@app.command(epilog="Example: reid-prune serve; then prefect deployment run prune-adapt/default")
def serve(prefect_port: int = 4200, mlflow_port: int = 5000,
          state_dir: Annotated[Path, typer.Option(help="PIDs and logs of the servers")] = Path(".serve"),
          profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Start a Prefect server, an MLflow server and the prune-adapt deployments, on 127.0.0.1."""
    from flows.services import Ports, ServiceError, start_services
    from reid_models.config import load_settings

    try:
        settings = load_settings(params, profile, set_ or [])
        state = start_services(settings, Path.cwd(), state_dir.resolve(), Ports(prefect_port, mlflow_port))
    except (*_user_errors(), ServiceError) as error:
        _fail(error)
    urls = state["urls"]
    console.print(f"Prefect UI {urls['prefect_ui']}   MLflow UI {urls['mlflow_ui']}   "
                  f"PIDs and logs in {state_dir}/ (stop with `make stop`)")
    console.print(f"run: PREFECT_API_URL={urls['prefect_api']} .venv/bin/prefect deployment run "
                  "prune-adapt/default --watch")


@app.command(epilog="Example: reid-prune stop")
def stop(state_dir: Annotated[Path, typer.Option(help="where `serve` recorded the PIDs")] = Path(".serve")) -> None:
    """Stop what `serve` started: the deployments' process first, then the MLflow and Prefect servers."""
    from flows.services import ServiceError, stop_services

    try:
        stopped = stop_services(state_dir.resolve())
    except ServiceError as error:
        _fail(error)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command(epilog="Example: reid-prune synth --domain target --out data/my_target --seed 1")
def synth(domain: Annotated[str, typer.Option(help="source | target")],
          out: Annotated[Path, typer.Option(help="folder to write (Market-1501 layout + manifest.csv)")],
          seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
          train_ids: Annotated[int, typer.Option(help="training identities")] = 200,
          test_ids: Annotated[int, typer.Option(help="test identities (query/gallery)")] = 800,
          family_size: Annotated[int, typer.Option(help="look-alike identities per family")] = 2,
          workers: Annotated[int, typer.Option(help="rendering processes")] = 2) -> None:
    """Render a synthetic multi-camera ReID domain (benchmark v2; params.yaml's data.synth sizes the pipeline's)."""
    from reid_models.data.synth import DomainSpec, generate_domain

    try:
        spec = DomainSpec(train_ids=train_ids, test_ids=test_ids, family_size=family_size)
        path = generate_domain(out, domain, seed=seed, spec=spec, workers=workers)
    except ValueError as error:
        _fail(error)
    counts = {folder.name: len(list(folder.glob("*.jpg"))) for folder in sorted(path.iterdir()) if folder.is_dir()}
    console.print(f"wrote {path}: " + ", ".join(f"{name} {n}" for name, n in counts.items()))


@app.command(epilog="Example: reid-prune prune --checkpoint outputs/pretrain/model.pt --criterion plfp "
                     "--flops-reduction 0.5 --out outputs/pruned")
def prune(checkpoint: Annotated[Path, typer.Option(help="a trained model.pt")],
          out: Annotated[Path, typer.Option(help="folder for the pruned model.pt, architecture.json, prune_report.json")],
          criterion: Annotated[Optional[str], typer.Option(help="plfp | l1 | l2 | fpgm | taylor | random")] = None,
          flops_reduction: Annotated[Optional[float], typer.Option(help="share of FLOPs to remove, (0, 0.95]")] = None,
          mode: Annotated[Optional[str], typer.Option(help="progressive | oneshot")] = None,
          profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Prune a trained model and fine-tune it (data and fine-tuning settings from params.yaml's prune section)."""
    _setup_logging()
    from reid_models.checkpoint import load_checkpoint
    from reid_models.config import load_settings
    from reid_models.preflight import check_domain, check_writable_folder
    from reid_models.stages import prune as prune_checkpoint

    chosen = {"prune.criterion": criterion, "prune.flops_reduction": flops_reduction, "prune.mode": mode}
    overrides = [*(set_ or []), *(f"{key}={value}" for key, value in chosen.items() if value is not None)]
    try:
        settings = load_settings(params, profile, overrides)
        load_checkpoint(checkpoint)  # the inputs first, in seconds: then the long work
        data = settings.prune.data
        check_domain(data, getattr(settings.data, data), settings.data)
        check_writable_folder("--out", str(out))
        result = prune_checkpoint(settings, checkpoint, out)
    except (*_user_errors(), ValueError) as error:
        _fail(error)
    report = result["report"]
    console.print(f"pruned {checkpoint} with {report['criterion']} ({report['mode']}): FLOPs "
                  f"{report['flops_before'] / 1e6:.1f}M -> {report['flops_after'] / 1e6:.1f}M "
                  f"({100 * report['measured_reduction']:.1f}% fewer), params {report['params_before'] / 1e6:.2f}M -> "
                  f"{report['params_after'] / 1e6:.2f}M")
    console.print(f"wrote {result['checkpoint']}")


@app.command(epilog="Example: reid-prune export outputs/scenarios/prune_during-plfp-0.5-supervised-seed0/model.pt "
                     "--quantize int8_ptq --out exported/")
def export(checkpoint: Annotated[Path, typer.Argument(help="a model.pt (pruned or not)")],
           out: Annotated[Path, typer.Option(help="folder for model.onnx (+ model.int8.onnx) and model.json")],
           format_: Annotated[str, typer.Option("--format", help="onnx (the only one so far)")] = "onnx",
           quantize: Annotated[str, typer.Option(help="none | int8_ptq (static int8, calibrated on training "
                                                      "images of the model's domain) | int8_qat (quantisation-aware "
                                                      "fine-tuning on that domain's training split first)")] = "none",
           qat_epochs: Annotated[int, typer.Option(help="int8_qat: epochs of fine-tuning (the checkpoint's "
                                                        "ship.qat_epochs if 0)", min=0)] = 0,
           calibration_images: Annotated[int, typer.Option(help="training images for int8 calibration")] = 300,
           calibration_method: Annotated[str, typer.Option(help="minmax | entropy | percentile")] = "minmax",
           check_images: Annotated[int, typer.Option(help="real images on which ONNX must equal PyTorch")] = 32) -> None:
    """Export a model's feature extractor for serving (ONNX Runtime), optionally as int8."""
    from reid_models import export as exporting
    from reid_models import shipping
    from reid_models.checkpoint import load_checkpoint
    from reid_models.preflight import check_writable_folder
    from reid_models.stages import model_from_payload

    _setup_logging()
    if format_ != "onnx":
        _fail(ValueError(f"--format {format_!r}: only onnx is offered"))
    if quantize not in ("none", "int8_ptq", "int8_qat"):
        _fail(ValueError(f"--quantize {quantize!r}: valid values are none, int8_ptq, int8_qat"))
    int8 = quantize != "none"
    if calibration_method not in exporting.CALIBRATION_METHODS:
        _fail(ValueError(f"--calibration-method {calibration_method!r}: valid values are "
                         f"{', '.join(exporting.CALIBRATION_METHODS)}"))
    try:
        payload = load_checkpoint(checkpoint)
        check_writable_folder("--out", str(out))
        model = model_from_payload(payload, str(checkpoint))
        domain = shipping.model_domain(payload)
        wanted = check_images + (calibration_images if int8 else 0)
        images = shipping.domain_training_images(payload, domain, wanted)
        if quantize == "int8_qat":
            from reid_models.config import Settings

            model = shipping.quantization_aware_model(model, payload, Settings.model_validate(payload["settings"]),
                                                       qat_epochs or None)
    except (*_user_errors(), FileNotFoundError) as error:
        _fail(error)
    height, width = images.shape[-2:]
    report = exporting.export_model(model, str(checkpoint), out, height, width, images[:check_images],
                                    images[check_images:] if int8 else None, calibration_method)
    for name, size in report.files.items():
        agreement = report.checks[name]["real"]
        console.print(f"wrote {out / name} ({size / 1e6:.1f} MB): vs PyTorch on {agreement['images']} {domain} "
                      f"images, max |diff| {agreement['max_abs_diff']:.1e}, min cosine {agreement['min_cosine']:.5f}")
    console.print(f"wrote {out / 'model.json'} (preprocessing, architecture, checks; also in the ONNX metadata)")


@app.command(epilog="Example: reid-prune inspect outputs/pruned/model.pt --timing")
def inspect(checkpoint: Annotated[Path, typer.Argument(help="a model.pt (pruned or not)")],
            height: int = 128, width: int = 64,
            timing: Annotated[bool, typer.Option(help="also time CPU latency and throughput")] = False) -> None:
    """Architecture, FLOPs, parameters and size of a checkpoint."""
    from reid_models.complexity import measure
    from reid_models.pruning.graph import ChannelGraph
    from reid_models.stages import load_model

    try:
        model = load_model(checkpoint)
    except _user_errors() as error:
        _fail(error)
    table = Table(title=f"{checkpoint}: {model.backbone_name}, embedding {model.feature_dim}")
    table.add_column("channel group (root conv)")
    table.add_column("channels", justify="right")
    for group in ChannelGraph(model, height, width).filter_groups():
        table.add_row(group.name, str(group.channels))
    console.print(table)
    cost = measure(model, height, width, timing=timing)
    console.print(f"FLOPs {cost['flops'] / 1e6:.1f}M (MACs {cost['macs'] / 1e6:.1f}M) at {height}x{width}, "
                  f"params {cost['params'] / 1e6:.3f}M, size {cost['size_bytes'] / 1e6:.1f} MB")
    if timing:
        console.print(f"CPU latency (batch 1) {cost['latency_ms']:.1f} ms, throughput (batch 32) "
                      f"{cost['throughput_ips']:.0f} images/s, {cost['threads']} threads")


if __name__ == "__main__":
    app()
