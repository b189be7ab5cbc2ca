"""A Prefect API server for one `reid-prune` command, which goes when the command goes.

Without `make serve`, Prefect starts a temporary server of its own in a subprocess and stops it
at exit, but a command killed with SIGKILL never reaches its exit handlers, so that server
stayed alive, holding its port. This one is the same server (Prefect's API app under uvicorn,
no UI) started with the kernel's parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`): when
the command dies, however it dies, the server gets SIGTERM. Elsewhere the parent-death signal
does not exist and Prefect's own temporary server is used.

Start it before Prefect is imported: Prefect reads `PREFECT_API_URL` when it loads its settings.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from flows import answers
from reid_models import signals

class TemporaryServerError(RuntimeError):
    """The server did not come up; the message names its log file."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with(parent: int):
    """The child's first act: ask for SIGTERM when its parent dies (and exit if it already has)."""
    def arm() -> None:
        if not signals.stop_with_parent(parent) or os.getppid() != parent:
            os._exit(1)
    return arm


def supported() -> bool:
    return sys.platform.startswith("linux")


def start(home: Path, timeout: float = 120.0) -> subprocess.Popen:
    """Start the server, point this process's Prefect at it, and stop it at normal exit."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "temporary-server.log"
    port = free_port()
    prefect_dir = Path(importlib.util.find_spec("prefect").submodule_search_locations[0])
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "0",
           "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "error", "--lifespan", "on"]
    with open(log_path, "wb") as log:
        # Its own session: Ctrl-C in a terminal signals the whole foreground process group, and a
        # server that died with the command's first SIGINT would leave the stopping command unable
        # to record its flow run's state. It ends with the command instead (parent-death signal).
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with(os.getpid()), start_new_session=True)
    atexit.register(stop, process)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while not answers(f"{api}/health"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise TemporaryServerError(f"the temporary Prefect server did not start; see {log_path}")
        time.sleep(0.2)
    os.environ["PREFECT_API_URL"] = api
    return process


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
