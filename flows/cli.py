"""`reid-prune`: the command line. Heavy imports happen inside commands so `--help` is instant."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import flows  # noqa: F401  (sets telemetry-off environment before Prefect/MLflow load)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prune a person ReID model for a new camera domain, with evidence.")
console = Console()

ProfileOption = Annotated[Optional[str], typer.Option("--profile", "-p", help="profile from params.yaml (default, quick)")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="override: KEY.PATH=VALUE, repeatable")]
ParamsOption = Annotated[str, typer.Option("--params", help="settings file")]


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[Exception], ...]:
    from reid_models.checkpoint import CheckpointError
    from reid_models.config import SettingsError
    from reid_models.data.readers import DataError

    return SettingsError, DataError, CheckpointError


def _metrics_table(summary: dict) -> Table:
    table = Table(title="ReID metrics (Market-1501 protocol)")
    table.add_column("test set")
    for column in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        table.add_column(column, justify="right")
    labels = {"source": "source (same cameras)", "target": "target (new cameras, direct transfer)"}
    for domain, values in summary.items():
        table.add_row(labels.get(domain, domain), *(f"{100 * values[k]:.1f}" for k in ("rank1", "rank5", "rank10", "mAP", "mINP")))
    return table


@app.command()
def run(profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Run the prune-adapt flow on the settings in params.yaml (the embedded synthetic benchmark by default)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from reid_models.config import load_settings

    try:
        settings = load_settings(params, profile, set_ or [])  # fail fast, before Prefect starts
    except _user_errors() as error:
        _fail(error)
    from flows.prune_adapt import prune_adapt
    from tasks.tracking import ui_command

    try:
        summary = prune_adapt(profile=profile, overrides=set_ or [], params=params)
    except _user_errors() as error:
        _fail(error)
    console.print(_metrics_table(summary))
    console.print(f"metrics: {Path(settings.outputs) / 'metrics.json'}   checkpoint: "
                  f"{Path(settings.outputs) / 'pretrain' / 'model.pt'}")
    console.print(f"MLflow UI: [bold]{ui_command(settings)}[/]  then open http://127.0.0.1:5000")


@app.command()
def stage(name: Annotated[str, typer.Argument(help="data | pretrain | evaluate")],
          profile: ProfileOption = None, set_: SetOption = None, params: ParamsOption = "params.yaml") -> None:
    """Run one stage as its own flow (what dvc.yaml calls)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from flows.prune_adapt import STAGE_FLOWS

    if name not in STAGE_FLOWS:
        _fail(ValueError(f"unknown stage {name!r}; valid: {', '.join(STAGE_FLOWS)}"))
    try:
        result = STAGE_FLOWS[name](profile=profile, overrides=set_ or [], params=params)
    except _user_errors() as error:
        _fail(error)
    if name == "evaluate":
        console.print(_metrics_table(result))


@app.command()
def synth(domain: Annotated[str, typer.Option(help="source | target")],
          out: Annotated[Path, typer.Option(help="folder to write (Market-1501 layout + manifest.csv)")],
          seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
          ids: Annotated[int, typer.Option(help="identities: half train, half test")] = 300,
          workers: Annotated[int, typer.Option(help="rendering processes")] = 2) -> None:
    """Render a synthetic multi-camera ReID domain."""
    from reid_models.data.synth import generate_domain

    try:
        path = generate_domain(out, domain, seed=seed, ids=ids, workers=workers)
    except ValueError as error:
        _fail(error)
    counts = {folder.name: len(list(folder.glob("*.jpg"))) for folder in sorted(path.iterdir()) if folder.is_dir()}
    console.print(f"wrote {path}: " + ", ".join(f"{name} {n}" for name, n in counts.items()))


if __name__ == "__main__":
    app()
