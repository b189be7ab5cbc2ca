"""MLflow tracking. The only module that imports mlflow.

Every call names its run id explicitly (through `MlflowClient`) instead of relying on MLflow's
"active run", so tasks running in threads or worker processes log to the right run. Scenarios
that run at once share one SQLite file, so writes that meet a lock are retried.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect.exceptions import TerminationSignal

from reid_models import signals
from reid_models.config import DomainSettings, Settings, artifact_location, tracking_uri
from reid_models.signals import StopRequested

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def data_version(pointer: Path = Path("data.dvc")) -> str:
    """The md5 that data.dvc records for the raw data folder ('untracked' without one)."""
    try:
        return str(yaml.safe_load(pointer.read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "untracked"


def _domain_name(domain: DomainSettings) -> str:
    return f"{domain.kind}:{Path(domain.path).name}"


def experiment_name(settings: Settings) -> str:
    """One experiment per dataset pair, so runs on different cameras are never compared by mistake."""
    return f"{settings.tracking.experiment} {_domain_name(settings.data.source)}->{_domain_name(settings.data.target)}"


def retrying(call: Callable[[], T], attempts: int = 30) -> T:
    """Run an MLflow call; when another writer holds the SQLite lock, wait and try again."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


class Tracker:
    """Logs to one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def params(self, values: dict) -> None:
        from mlflow.entities import Param

        batch = [Param(key, value) for key, value in flatten(values).items()]
        for start in range(0, len(batch), 100):  # MLflow's batch limit
            retrying(lambda chunk=batch[start:start + 100]: self.client.log_batch(self.run_id, params=chunk))

    def metrics(self, values: dict, prefix: str = "", step: int | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(f"{prefix}{key}", float(value), stamp, step or 0) for key, value in values.items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if batch:
            retrying(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def experiment_id(self) -> str:
        return retrying(lambda: self.client.get_run(self.run_id)).info.experiment_id

    def tags(self, values: dict) -> None:
        """Tags, unlike params, may change when a resumed run reports again."""
        for key, value in values.items():
            retrying(lambda key=key, value=value: self.client.set_tag(self.run_id, key, str(value)))

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        retrying(lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def has_artifact(self, path: str) -> bool:
        folder = path.rpartition("/")[0] or None
        return any(a.path == path for a in retrying(lambda: self.client.list_artifacts(self.run_id, folder)))

    def onnx_model(self, path: str | Path, folder: str = "model") -> None:
        """An ONNX file as MLflow's onnx flavour (MLmodel, model.onnx, environment files) in `folder`."""
        import tempfile
        from importlib.metadata import version

        import mlflow.onnx
        import onnx

        with tempfile.TemporaryDirectory() as scratch:
            flavour = Path(scratch) / "onnx"
            mlflow.onnx.save_model(onnx.load(path), flavour, save_as_external_data=False,
                                   # given, not inferred: MLflow infers them by importing the model for seconds
                                   pip_requirements=[f"{name}=={version(name)}" for name in ("onnx", "onnxruntime")])
            for file in sorted(flavour.iterdir()):
                self.artifact(file, folder)


def client_for(settings: Settings) -> tuple[MlflowClient, str]:
    """Client on the absolute tracking URI and the dataset pair's experiment id (created if new,
    with the UI settings of `experiment_ui_tags`)."""
    client = MlflowClient(tracking_uri=tracking_uri(settings.tracking))
    name = experiment_name(settings)
    experiment = retrying(lambda: client.get_experiment_by_name(name))
    if experiment is None:
        artifact_root = artifact_location(settings.tracking)
        try:
            retrying(lambda: client.create_experiment(name, artifact_location=artifact_root))
        except MlflowException:  # another worker created it first
            pass
        experiment = client.get_experiment_by_name(name)
    for key, value in experiment_ui_tags().items():
        # earlier experiments get them too; our saved view is kept current, a kind the user set stays
        ours = key.startswith("mlflow.sharedViewState.")
        if experiment.tags.get(key) != value and (ours or key not in experiment.tags):
            retrying(lambda: client.set_experiment_tag(experiment.experiment_id, key, value))
    return client, experiment.experiment_id


# The MLflow UI (3.17) opens a new experiment on its GenAI overview unless told otherwise, and its
# chart view has no FLOPs-vs-rank-1 chart until the user builds one. The experiment kind tag is
# what MLflow's UI reads for the first from version 3.18 on (mlflow/mlflow#24493); in 3.17 the link
# `ui_url` prints carries `workflowType=machine_learning`. The saved view (an experiment tag the UI
# lists under "Views") holds the scatter of GFLOPs against rank-1 over every scenario run.
FLOPS_VS_RANK1_VIEW = "flops-vs-rank1"


def experiment_ui_tags() -> dict[str, str]:
    # The scatter gets a section of its own, first: the UI adds a chart per metric (about 60) to
    # "Model metrics", which would push it out of sight.
    first = {"uuid": "reid-prune-flops-rank1", "name": "FLOPs vs rank-1", "display": True, "isReordered": False,
             "deleted": False, "isGenerated": False}
    section = {"uuid": "reid-prune-scenarios", "name": "Model metrics", "display": True, "isReordered": False,
               "deleted": False, "isGenerated": True}
    chart = {"uuid": "reid-prune-gflops-rank1", "type": "SCATTER", "runsCountToCompare": 100,
             "metricSectionId": first["uuid"], "deleted": False, "isGenerated": False,
             "displayName": "GFLOPs vs target rank-1 (one point per scenario run)",
             "xaxis": {"key": "gflops", "type": "METRIC"}, "yaxis": {"key": "rank1", "type": "METRIC"}}
    # Scenario runs sit collapsed under the pipeline's run, where a chart finds no points (and a
    # saved view cannot expand them): grouped by setting, they are listed and plotted, one point
    # per setting at its mean over seeds. The filter leaves out runs without rank-1 (the parents).
    grouping = {"aggregateFunction": "average",
                "groupByKeys": [{"mode": "param", "groupByData": key}
                                for key in ("scenario", "criterion", "flops_reduction", "adaptation")]}
    state = {"runsHiddenMode": "SHOW_ALL", "compareRunSections": [first, section], "compareRunCharts": [chart],
             "groupBy": grouping, "useGroupedValuesInCharts": True, "searchFilter": "metrics.rank1 >= 0"}
    view = {"name": "FLOPs vs rank-1 (reid-prune)", "createdAt": 0, "updatedAt": 0, "state": json.dumps(state)}
    return {"mlflow.experimentKind": "custom_model_development",
            f"mlflow.sharedViewState.{FLOPS_VS_RANK1_VIEW}": json.dumps(view)}


def ui_url(settings: Settings, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs in the chart view with the FLOPs-vs-rank-1 scatter, in the MLflow UI."""
    _, experiment_id = client_for(settings)
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART"
            f"&viewStateShareKey={FLOPS_VS_RANK1_VIEW}")


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs (a zombie, exited but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def close_orphaned_runs(settings: Settings) -> list[str]:
    """Mark FAILED the runs left RUNNING by a process of this host that no longer exists (a
    killed pipeline), so no run stays RUNNING forever. Returns their ids."""
    client, experiment_id = client_for(settings)
    host = socket.gethostname()
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    orphans = [run.info.run_id for run in running
               if run.data.tags.get("host") == host and not pid_alive(int(run.data.tags.get("pid", "0")))]
    for run_id in orphans:
        retrying(lambda run_id=run_id: client.set_terminated(run_id, status="FAILED"))
        retrying(lambda run_id=run_id: client.set_tag(run_id, "failure", "process killed; closed by the next run"))
    if orphans:
        log.warning("marked %d MLflow run(s) of killed processes as FAILED", len(orphans))
    return orphans


def is_stop(error: BaseException) -> bool:
    """Whether an exception means the user stopped the work (not that the work failed)."""
    return isinstance(error, (KeyboardInterrupt, StopRequested, TerminationSignal)) or \
        signals.stop_requested() is not None


@contextmanager
def tracked_run(settings: Settings, name: str, parent_run_id: str | None = None) -> Iterator[Tracker]:
    """An MLflow run that ends FINISHED, KILLED if the user stopped it (SIGINT/SIGTERM), or FAILED
    if the body raises anything else."""
    client, experiment_id = client_for(settings)
    tags = {"profile": settings.profile, "git_commit": git_commit(), "data_dvc_md5": data_version(),
            "host": socket.gethostname(), "pid": str(os.getpid())}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = retrying(lambda: client.create_run(experiment_id, run_name=name, tags=tags))
    tracker = Tracker(client, run.info.run_id)
    try:
        yield tracker
    except BaseException as error:
        status = "KILLED" if is_stop(error) else "FAILED"
        retrying(lambda: client.set_terminated(run.info.run_id, status=status))
        raise
    retrying(lambda: client.set_terminated(run.info.run_id, status="FINISHED"))


def register_model(settings: Settings, tracker: Tracker, artifact_folder: str, tags: dict[str, str]) -> str:
    """A new Model Registry version for the model this run logged under `artifact_folder`."""
    client, name = tracker.client, settings.tracking.registered_model
    try:
        retrying(lambda: client.create_registered_model(name))
    except MlflowException as error:
        if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
            raise
    source = f"{client.get_run(tracker.run_id).info.artifact_uri}/{artifact_folder}"
    return retrying(lambda: client.create_model_version(name, source, run_id=tracker.run_id, tags=tags)).version


def set_best_aliases(settings: Settings, rows: list[dict]) -> dict[str, str]:
    """Point an alias at the best target rank-1 of every (FLOPs budget, adaptation), e.g.
    `best-flops50-supervised`. Rows without a registered version are skipped. Returns alias -> key."""
    client = MlflowClient(tracking_uri=tracking_uri(settings.tracking))
    best: dict[str, dict] = {}
    for row in rows:
        if not row.get("model_version") or row["adaptation"] == "none":
            continue
        alias = f"best-flops{round(100 * row['flops_reduction'])}-{row['adaptation']}"
        if alias not in best or row["rank1"] > best[alias]["rank1"]:
            best[alias] = row
    for alias, row in best.items():
        retrying(lambda alias=alias, row=row: client.set_registered_model_alias(
            settings.tracking.registered_model, alias, row["model_version"]))
    return {alias: row["key"] for alias, row in best.items()}


def ui_command(settings: Settings) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri(settings.tracking)} --host 127.0.0.1 --port 5000"


__all__ = ["Tracker", "tracked_run", "ui_command", "ui_url", "flatten", "mlflow", "close_orphaned_runs",
           "register_model", "set_best_aliases", "experiment_name"]
