"""The deployment path end to end, as README shows it: `reid-prune serve` (Prefect server, MLflow
server, deployments), `prefect deployment run prune-adapt/quick --watch`, then `reid-prune stop`."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import PARAMS, ROOT, quick_overrides
from tests.test_flow import TINY

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_run_the_deployment_and_stop(tiny_domains, tmp_path):
    prefect_port, mlflow_port = free_port(), free_port()
    state_dir = tmp_path / "serve"
    overrides = quick_overrides(tmp_path, tiny_domains, *TINY, "scenarios.names=[source_only,prune_during]",
                                "scenarios.adaptation=[supervised]")
    tracking = [o for o in overrides if o.startswith("tracking.")]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    cli = [sys.executable, "-m", "flows.cli"]
    started = subprocess.run([*cli, "serve", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port),
                              "--state-dir", str(state_dir), "--params", str(PARAMS),
                              *(arg for o in tracking for arg in ("-S", o))],
                             capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    state = json.loads((state_dir / "services.json").read_text()) if (state_dir / "services.json").is_file() else {}
    pids = [info["pid"] for name, info in state.items() if name != "urls"]
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert len(pids) == 3
        api = f"http://127.0.0.1:{prefect_port}/api"
        assert get_json(f"{api}/health") is True

        # As README shows it: the served deployment pointed at other data and grid through --param.
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "prune-adapt/quick",
                              "--param", f"overrides={json.dumps(overrides)}", "--param", f"params={PARAMS}",
                              "--watch"], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                             env={**env, "PREFECT_API_URL": api})
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
        assert get_json(f"{api}/flow_runs/{flow_run_id}")["state"]["type"] == "COMPLETED"
        assert (tmp_path / "outputs" / "report" / "results.csv").is_file()  # the overrides' outputs folder

        # The answer where the user looks: table, markdown and link artifacts of this flow run.
        artifacts = get_json(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        by_key = {a["key"]: a for a in artifacts}
        assert {"prune-adapt-quick-results", "prune-adapt-quick-answer", "prune-adapt-quick-mlflow-run",
                "prune-adapt-quick-best-flops50-supervised"} <= set(by_key), sorted(by_key)
        assert by_key["prune-adapt-quick-results"]["type"] == "table"
        table = json.loads(by_key["prune-adapt-quick-results"]["data"])
        assert sorted(row["scenario"] for row in table) == ["prune_during", "source_only"]
        answer = by_key["prune-adapt-quick-answer"]
        assert answer["type"] == "markdown" and "Where to prune" in answer["data"]
        assert "data:image/png;base64," in answer["data"]  # the FLOPs-vs-rank-1 figure
        # (Prefect keeps a link artifact as markdown: "[text](url)")
        assert f"(http://127.0.0.1:{mlflow_port}/#/experiments/" in by_key["prune-adapt-quick-mlflow-run"]["data"]
        assert "/#/models/reid-prune/versions/" in by_key["prune-adapt-quick-best-flops50-supervised"]["data"]

        # A bad override fails the flow run in seconds, with the CLI's one line as its state message.
        bad = subprocess.run([str(BIN / "prefect"), "deployment", "run", "prune-adapt/quick", "--param",
                              f"overrides={json.dumps([*overrides, 'pretrain.init=' + str(tmp_path / 'none.pth')])}",
                              "--param", f"params={PARAMS}", "--watch"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300, env={**env, "PREFECT_API_URL": api})
        bad_id = re.search(r"UUID: ([0-9a-f-]{36})", bad.stdout).group(1)
        state = get_json(f"{api}/flow_runs/{bad_id}")["state"]
        assert state["type"] == "FAILED" and f"pretrain.init: weights file {tmp_path / 'none.pth'} not found" \
            in state["message"], state

        mlflow = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow"
        experiment = get_json(f"{mlflow}/experiments/search", {"max_results": 10})["experiments"]
        (ours,) = [e for e in experiment if e["name"].startswith("reid-prune ")]
        runs = get_json(f"{mlflow}/runs/search", {"experiment_ids": [ours["experiment_id"]]})["runs"]
        (parent,) = [r for r in runs if r["info"]["run_name"] == "prune-adapt-quick"]
        children = [r for r in runs if {"key": "mlflow.parentRunId", "value": parent["info"]["run_id"]}
                    in r["data"]["tags"]]
        assert parent["info"]["status"] == "FINISHED"
        assert sorted(c["info"]["run_name"].split("-")[0] for c in children) == ["prune_during", "source_only"]
        assert all(c["info"]["status"] == "FINISHED" for c in children)

        # Stopping a served run: cancelling it in Prefect stops the work within seconds (the serving
        # process sends the flow run's process SIGTERM) and the MLflow runs of the stopped work are KILLED.
        first_runs = {r["info"]["run_id"] for r in runs}
        long = [*quick_overrides(tmp_path / "long", tiny_domains, *TINY, "scenarios.names=[adapt_only]",
                                 "scenarios.adaptation=[supervised]", "scenarios.epochs=40"), *tracking]
        started = subprocess.run([str(BIN / "prefect"), "deployment", "run", "prune-adapt/quick", "--params",
                                  json.dumps({"overrides": long, "params": str(PARAMS)})],
                                 capture_output=True, text=True, cwd=tmp_path, timeout=120,
                                 env={**env, "PREFECT_API_URL": api})
        long_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
        epoch = tmp_path / "long" / "outputs" / "scenarios" / "adapt_only-none-0-supervised-seed0" / "step1_adapt" \
            / "last.pt"
        deadline = time.monotonic() + 600
        while not epoch.is_file():  # adapt_only has finished an epoch: cancel it mid-scenario
            assert time.monotonic() < deadline, "the served run never started training"
            time.sleep(0.5)
        subprocess.run([str(BIN / "prefect"), "flow-run", "cancel", long_run_id], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120, env={**env, "PREFECT_API_URL": api}, check=True)
        cancelled = time.monotonic()  # the serving process sees it at its next poll (2 s) and sends SIGTERM
        while get_json(f"{api}/flow_runs/{long_run_id}")["state"]["type"] not in ("CANCELLED", "CRASHED"):
            assert time.monotonic() - cancelled < 60, "the cancelled run did not end"
            time.sleep(0.5)

        def long_runs() -> list[dict]:  # the MLflow runs of the cancelled pipeline
            found = get_json(f"{mlflow}/runs/search", {"experiment_ids": [ours["experiment_id"]]})["runs"]
            return [r for r in found if r["info"]["run_id"] not in first_runs]

        while not long_runs() or any(r["info"]["status"] == "RUNNING" for r in long_runs()):
            assert time.monotonic() - cancelled < 60, [r["info"] for r in long_runs()]  # MLflow hears a bit later
            time.sleep(0.5)
        statuses = {r["info"]["run_name"]: r["info"]["status"] for r in long_runs()}
        assert statuses == {"prune-adapt-quick": "KILLED", "adapt_only-none-0-supervised-seed0": "KILLED"}, statuses
        print(f"served run: cancelled to KILLED runs in {time.monotonic() - cancelled:.1f} s")
        assert time.monotonic() - cancelled < 20, "stopping a served run took more than 20 s"
    finally:
        stopped = subprocess.run([*cli, "stop", "--state-dir", str(state_dir)], capture_output=True, text=True,
                                 cwd=ROOT, timeout=120, env=env)
    assert stopped.returncode == 0 and "prefect-server" in stopped.stdout
    assert not any(group_alive(pid) for pid in pids)
    assert not (state_dir / "services.json").exists()


def test_flows_report_to_the_served_prefect_server_only_while_it_answers(tmp_path):
    """`reid-prune run` next to a running `make serve` must use that server, not start a second
    one on the same SQLite database; a stale or broken state file must not redirect it."""
    import http.server
    import threading

    from flows import running_prefect_api

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}/api"
    state = tmp_path / "services.json"
    state.write_text(json.dumps({"urls": {"prefect_api": api}}))
    assert running_prefect_api(state) == api

    server.shutdown()
    server.server_close()
    assert running_prefect_api(state) is None  # recorded, but no longer answering
    state.write_text("{not json")
    assert running_prefect_api(state) is None
    assert running_prefect_api(tmp_path / "missing.json") is None
