"""Prefect flows and the `reid-prune` CLI.

Telemetry is switched off before Prefect, MLflow or DVC are imported; Prefect's home (its
SQLite database) lives in the project unless the user chose another. When `make serve`'s
Prefect server is up, flows started here report to it (and show in its UI) instead of starting
a temporary server of their own on the same database.
"""

import json
import os
import urllib.request
from pathlib import Path

for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "PREFECT_HOME": str(Path.cwd() / ".prefect"),
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_name, _value)


STAGE_NAMES = ("data", "pretrain", "scenarios", "report")  # the stage flows, in dvc.yaml's order
STATE_FILE = "services.json"  # where `make serve` records its PIDs and URLs (flows/services.py)


def answers(url: str, timeout: float = 2) -> bool:
    """Whether a health-check URL answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:  # refused, timed out, HTTP error
        return False


def running_prefect_api(state_file: Path) -> str | None:
    """The API URL recorded by `make serve`, if that server answers its health check now."""
    try:
        url = json.loads(state_file.read_text())["urls"]["prefect_api"]
    except (OSError, ValueError, KeyError, TypeError):  # no file, bad JSON, no URL recorded
        return None
    return url if isinstance(url, str) and answers(f"{url}/health") else None


SERVED_PREFECT_API = None
if "PREFECT_API_URL" not in os.environ:
    SERVED_PREFECT_API = running_prefect_api(Path.cwd() / ".serve" / STATE_FILE)
    if SERVED_PREFECT_API:
        os.environ["PREFECT_API_URL"] = SERVED_PREFECT_API
