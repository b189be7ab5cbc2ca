"""Prefect flows and the `reid-prune` CLI.

Telemetry is switched off before Prefect, MLflow or DVC are imported; Prefect's home (its
SQLite database) lives in the project unless the user chose another.
"""

import os
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
