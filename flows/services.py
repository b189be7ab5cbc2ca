"""Local servers for the deployment path: a Prefect server, an MLflow server, and the process
that serves the `prune-adapt` deployments. All bind 127.0.0.1.

`start_services` launches each in its own process group, records the PIDs in
`<state_dir>/services.json`, and waits until each answers its health check (the Prefect API,
MLflow's /health, and the deployment being registered). `stop_services` stops them in reverse
order: the serve process before the servers it talks to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from reid_models.checkpoint import save_json
from reid_models.config import Settings, artifact_location, tracking_uri
from flows import STATE_FILE, answers
from flows.serve import DEPLOYMENTS
from tasks.tracking import pid_alive


class ServiceError(RuntimeError):
    """A server did not come up (its log file is named) or the state file is unusable."""


@dataclass(frozen=True)
class Ports:
    prefect: int = 4200
    mlflow: int = 5000

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow}"


def _launch(name: str, command: list[str], env: dict, state_dir: Path, root: Path) -> subprocess.Popen:
    log = open(state_dir / f"{name}.log", "wb")
    return subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # own process group: stop takes its children too


def _wait_healthy(name: str, process: subprocess.Popen, urls: list[str], state_dir: Path, timeout: float) -> None:
    """Every URL must answer 200 (the serve process registers its deployments one by one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{name} exited with code {process.returncode}; see {state_dir / f'{name}.log'}")
        if all(answers(url) for url in urls):
            return
        time.sleep(0.5)
    raise ServiceError(f"{name} did not answer {', '.join(urls)} within {timeout:.0f} s; "
                       f"see {state_dir / f'{name}.log'}")


def read_state(state_dir: Path) -> dict:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ServiceError(f"{path} is not valid JSON ({error}); stop the processes by hand and delete it") from None


def _write_state(state_dir: Path, state: dict) -> None:
    save_json(state_dir / STATE_FILE, state)  # the project's one atomic writer


def start_services(settings: Settings, root: Path, state_dir: Path, ports: Ports = Ports(),
                   timeout: float = 120.0) -> dict:
    """Start the three processes (or fail naming the log to read); returns the state written."""
    state_dir.mkdir(parents=True, exist_ok=True)
    running = [name for name, info in read_state(state_dir).items() if "pid" in info and pid_alive(info["pid"])]
    if running:
        raise ServiceError(f"already running: {', '.join(running)} (see {state_dir / STATE_FILE}); `make stop` first")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "DVC_NO_ANALYTICS": "1", "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(root / ".prefect"))}
    artifacts = artifact_location(settings.tracking, root)
    if artifacts.startswith("file://"):
        Path(artifacts.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    commands = {
        # The UI calls the API at PREFECT_UI_API_URL, which otherwise stays on port 4200 whatever --port says.
        "prefect-server": ([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
                            "--port", str(ports.prefect)], [f"{ports.prefect_api}/health"],
                           {**env, "PREFECT_UI_API_URL": ports.prefect_api}),
        "mlflow-server": ([str(bin_dir / "mlflow"), "server", "--backend-store-uri",
                           tracking_uri(settings.tracking, root), "--default-artifact-root", artifacts,
                           "--host", "127.0.0.1", "--port", str(ports.mlflow), "--workers", "1"],
                          [f"{ports.mlflow_url}/health"], env),
        "deployments": ([sys.executable, "-m", "flows.serve"],
                        [f"{ports.prefect_api}/deployments/name/prune-adapt/{name}" for name in DEPLOYMENTS],
                        # a queued run starts within 2 s instead of Prefect's default 10 s poll
                        {"PREFECT_RUNNER_POLL_FREQUENCY": "2", **env, "PREFECT_API_URL": ports.prefect_api,
                         "REID_PRUNE_MLFLOW_UI": ports.mlflow_url}),
    }
    state: dict = {}
    try:
        for name, (command, health, process_env) in commands.items():
            process = _launch(name, command, process_env, state_dir, root)
            state[name] = {"pid": process.pid, "health": health, "log": str(state_dir / f"{name}.log")}
            _write_state(state_dir, state)
            _wait_healthy(name, process, health, state_dir, timeout)
    except ServiceError:
        stop_services(state_dir)  # leave nothing half-started behind
        raise
    state["urls"] = {"prefect_api": ports.prefect_api, "prefect_ui": f"http://127.0.0.1:{ports.prefect}",
                     "mlflow_ui": ports.mlflow_url}
    _write_state(state_dir, state)
    return state


def _stop_group(pid: int, grace: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_services(state_dir: Path, grace: float = 20.0) -> list[str]:
    """Stop what start_services recorded, serve process first; returns the names stopped."""
    state = read_state(state_dir)
    stopped = []
    for name in ("deployments", "mlflow-server", "prefect-server"):
        if name in state:
            _stop_group(state[name]["pid"], grace)
            stopped.append(name)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped
