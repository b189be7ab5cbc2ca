"""MLflow tracking. The only module that imports mlflow.

Every call names its run id explicitly (through `MlflowClient`) instead of relying on MLflow's
"active run", so tasks running in threads or worker processes log to the right run.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from reid_models.config import Settings, tracking_uri

log = logging.getLogger(__name__)


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Tracker:
    """Logs to one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def params(self, values: dict) -> None:
        for key, value in flatten(values).items():
            self.client.log_param(self.run_id, key, value)

    def metrics(self, values: dict, prefix: str = "", step: int | None = None) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.client.log_metric(self.run_id, f"{prefix}{key}", float(value), step=step)

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)


def client_for(settings: Settings) -> tuple[MlflowClient, str]:
    """Client on the absolute tracking URI and the experiment's id (created if new)."""
    uri = tracking_uri(settings.tracking)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    if experiment is not None:
        return client, experiment.experiment_id
    artifact_root = Path(settings.tracking.artifact_root).resolve().as_uri()
    return client, client.create_experiment(settings.tracking.experiment, artifact_location=artifact_root)


@contextmanager
def tracked_run(settings: Settings, name: str, parent_run_id: str | None = None) -> Iterator[Tracker]:
    """An MLflow run that ends FINISHED, or FAILED if the body raises."""
    client, experiment_id = client_for(settings)
    tags = {"profile": settings.profile, "git_commit": git_commit()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    tracker = Tracker(client, run.info.run_id)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def ui_command(settings: Settings) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri(settings.tracking)} --host 127.0.0.1 --port 5000"


__all__ = ["Tracker", "tracked_run", "ui_command", "flatten", "mlflow"]
