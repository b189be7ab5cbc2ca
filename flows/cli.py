"""`reid-prune`: the command line. Heavy imports happen inside commands so `--help` is instant."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import flows  # sets telemetry-off environment before Prefect/MLflow load

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prune a person ReID model for a new camera domain, with evidence.")
# Long paths in errors stay on one line; piped output (CI, logs) gets room for the metrics table.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)

ProfileOption = Annotated[Optional[str], typer.Option("--profile", "-p", help="profile from params.yaml (default, quick)")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="override: KEY.PATH=VALUE, repeatable")]
ParamsOption = Annotated[str, typer.Option("--params", help="settings file")]


def _setup_logging() -> None:
    """Our progress at INFO; the HTTP chatter of Prefect's client and MLflow's store at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "prefect", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[Exception], ...]:
    from reid_models.checkpoint import CheckpointError
    from reid_models.config import SettingsError
    from reid_models.data.readers import DataError

    return SettingsError, DataError, CheckpointError


def _results_table(frame) -> Table:
    """One row per scenario setting (mean over seeds): cost and target-domain ReID metrics (percent)."""
    from reid_models.report import summary_over_seeds

    table = Table(title="Where to prune: scenarios on the target cameras (Market-1501 protocol)",
                  caption="rank/mAP/mINP on the target test split (new cameras, unseen identities); "
                          "src r1: source test rank-1; images: training images seen after pretraining")
    columns = ("scenario", "criterion", "FLOPs -", "adaptation", "GFLOPs", "params (M)", "latency (ms)", "rank1",
               "mAP", "mINP", "src r1", "images", "seeds")
    for column in columns:
        text = column in ("scenario", "criterion", "adaptation")
        # names are what the reader scans for: never cut them; headers of numbers may wrap instead
        table.add_column(column, justify="left" if text else "right", no_wrap=text, min_width=12 if text else None)
    for row in summary_over_seeds(frame).itertuples():
        spread = f" ({100 * row.rank1_min:.1f}-{100 * row.rank1_max:.1f})" if row.seeds > 1 else ""
        table.add_row(row.scenario, row.criterion, f"{row.flops_reduction:g}", row.adaptation, f"{row.gflops:.3f}",
                      f"{row.params_m:.2f}", f"{row.latency_ms:.1f}", f"{100 * row.rank1:.1f}{spread}",
                      f"{100 * row.mAP:.1f}", f"{100 * row.mINP:.1f}", f"{100 * row.source_rank1:.1f}",
                      str(int(row.images_seen)), str(int(row.seeds)))
    return table


def _print_results(settings, paths: dict) -> None:
    from reid_models.report import load_results
    from tasks.tracking import ui_command

    console.print(_results_table(load_results(Path(paths["csv"]).parent)))
    console.print(f"results: {paths['csv']}   plot: {paths['plot']}   summary: {paths['summary']}")
    console.print(f"MLflow UI: [bold]{ui_command(settings)}[/]  then open http://127.0.0.1:5000")


@app.command()
def run(profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Run the prune-adapt flow on the settings in params.yaml (the embedded synthetic benchmark by default)."""
    _setup_logging()
    from flows.prune_adapt import settings_for

    try:
        settings = settings_for(profile, set_, params)  # fail fast, before Prefect starts
    except (*_user_errors(), ValueError) as error:
        _fail(error)
    if flows.SERVED_PREFECT_API:
        console.print(f"Prefect: reporting to the running `make serve` server ({flows.SERVED_PREFECT_API})")
    from flows.prune_adapt import prune_adapt

    try:
        result = prune_adapt(profile=profile, overrides=set_ or [], params=params)
    except _user_errors() as error:
        _fail(error)
    _print_results(settings, result["paths"])


def _comparisons_table(frame) -> Table:
    """Paired differences A - B over seeds (points), their 95% interval and whether it excludes 0."""
    table = Table(title="Paired comparisons on the target test split (A - B, points; 95% hierarchical bootstrap "
                        "over seeds and query identities)")
    for column in ("comparison", "adaptation", "FLOPs -", "metric", "A - B", "95% CI", "per seed", "seeds", "verdict"):
        text = column in ("comparison", "adaptation", "metric", "per seed", "verdict")
        table.add_column(column, justify="left" if text else "right", no_wrap=column == "comparison")
    from rich.markup import escape  # labels such as prune_during[plfp] are not markup

    for row in frame.itertuples():
        verdict = f"resolved: {row.winner} better" if row.resolved else "not resolved"
        cells = (row.comparison, row.adaptation, f"{row.flops_reduction:g}", row.metric, f"{100 * row.diff:+.1f}",
                 f"[{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}]",
                 " ".join(f"{100 * d:+.1f}" for d in row.per_seed), str(row.n_seeds), verdict)
        table.add_row(*(escape(cell) for cell in cells))
    return table


@app.command()
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


@app.command()
def stage(name: Annotated[str, typer.Argument(help="data | pretrain | scenarios | report")],
          profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Run one stage as its own flow (what dvc.yaml calls)."""
    _setup_logging()
    from flows.prune_adapt import STAGE_FLOWS

    if name not in STAGE_FLOWS:
        _fail(ValueError(f"unknown stage {name!r}; valid: {', '.join(STAGE_FLOWS)}"))
    try:
        result = STAGE_FLOWS[name](profile=profile, overrides=set_ or [], params=params)
    except (*_user_errors(), FileNotFoundError) as error:
        _fail(error)
    if name == "report":
        from reid_models.config import load_settings

        _print_results(load_settings(params, profile, set_ or []), result["paths"])


@app.command()
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


@app.command()
def stop(state_dir: Annotated[Path, typer.Option(help="where `serve` recorded the PIDs")] = Path(".serve")) -> None:
    """Stop what `serve` started: the deployments' process first, then the MLflow and Prefect servers."""
    from flows.services import ServiceError, stop_services

    try:
        stopped = stop_services(state_dir.resolve())
    except ServiceError as error:
        _fail(error)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
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


@app.command()
def prune(checkpoint: Annotated[Path, typer.Option(help="a trained model.pt")],
          out: Annotated[Path, typer.Option(help="folder for the pruned model.pt, architecture.json, prune_report.json")],
          criterion: Annotated[Optional[str], typer.Option(help="plfp | l1 | l2 | fpgm | taylor | random")] = None,
          flops_reduction: Annotated[Optional[float], typer.Option(help="share of FLOPs to remove, (0, 0.95]")] = None,
          mode: Annotated[Optional[str], typer.Option(help="progressive | oneshot")] = None,
          profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Prune a trained model and fine-tune it (data and fine-tuning settings from params.yaml's prune section)."""
    _setup_logging()
    from reid_models.config import load_settings
    from reid_models.stages import prune as prune_checkpoint

    chosen = {"prune.criterion": criterion, "prune.flops_reduction": flops_reduction, "prune.mode": mode}
    overrides = [*(set_ or []), *(f"{key}={value}" for key, value in chosen.items() if value is not None)]
    try:
        settings = load_settings(params, profile, overrides)
        result = prune_checkpoint(settings, checkpoint, out)
    except (*_user_errors(), ValueError) as error:
        _fail(error)
    report = result["report"]
    console.print(f"pruned {checkpoint} with {report['criterion']} ({report['mode']}): FLOPs "
                  f"{report['flops_before'] / 1e6:.1f}M -> {report['flops_after'] / 1e6:.1f}M "
                  f"({100 * report['measured_reduction']:.1f}% fewer), params {report['params_before'] / 1e6:.2f}M -> "
                  f"{report['params_after'] / 1e6:.2f}M")
    console.print(f"wrote {result['checkpoint']}")


@app.command()
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
