"""What the user sees in the MLflow and Prefect UIs: a screenshot and the rendered page's text,
from a real browser (headless Chromium, Debian package `chromium`).

MLflow: starts `mlflow ui` on the run's tracking store (127.0.0.1, a free port), opens the link
that `reid-prune run` prints (the experiment's runs, chart view, FLOPs-vs-rank-1 saved view), saves
a screenshot and checks that the scenario runs are listed.

    .venv/bin/reid-prune run --profile quick
    .venv/bin/python -m flows.ui_snapshot --profile quick --out docs/img/mlflow_ui.png

Prefect: a flow run's page on a running Prefect server with its UI (`make serve`), whose graph
shows the artifacts the run published, and the rendered answer artifact (three sentences and the
FLOPs-vs-rank-1 figure); checks that both show them.

    .venv/bin/python -m flows.ui_snapshot --prefect-flow-run <flow run id> --prefect-ui http://127.0.0.1:4200 \\
        --out docs/img/prefect_run.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows import answers
from flows.temporary_server import free_port

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@contextmanager
def mlflow_ui(tracking_uri: str, timeout: float = 180.0) -> Iterator[str]:
    """`mlflow ui` on 127.0.0.1 for the duration of the block; yields its base URL."""
    port = free_port()
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not answers(f"{base}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"mlflow ui did not start: {log.read()[-2000:].decode(errors='replace')}")
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def snapshot(url: str, out: Path, wait_ms: int = 20000, size: str = "1600,1250") -> str:
    """Screenshot of `url` after `wait_ms` of the page's own time, into `out`; returns the DOM."""
    chrome = browser()
    if chrome is None:
        raise RuntimeError("no Chromium found; install it (Debian: apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    common = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--window-size={size}", f"--virtual-time-budget={wait_ms}"]
    with tempfile.TemporaryDirectory() as profile:
        flags = [*common, f"--user-data-dir={profile}"]
        subprocess.run([*flags, f"--screenshot={out}", url], check=True, capture_output=True, timeout=300)
        dom = subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=300)
    return dom.stdout


def prefect_snapshot(flow_run_id: str, out: Path, ui: str) -> None:
    """The flow run's page (its graph draws the artifacts it published) and its answer artifact as
    the UI renders it (`<out stem>_answer.png`); the artifacts are listed through the Prefect API.
    Exits 1 unless the run published its table, answer and MLflow link and the answer page shows
    the answer."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{ui}/api/artifacts/filter", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        ids = {artifact["key"]: artifact["id"] for artifact in json.loads(response.read()) if artifact.get("key")}
    keys = sorted(ids)
    snapshot(f"{ui}/runs/flow-run/{flow_run_id}", out, size="1600,900")
    answer_id = next((ids[key] for key in keys if key.endswith("-answer")), None)
    answer_out = out.with_name(f"{out.stem}_answer{out.suffix}")
    answer_dom = snapshot(f"{ui}/artifacts/artifact/{answer_id}", answer_out, size="1400,1700") if answer_id else ""
    shown = "The answer of this run" in answer_dom  # the markdown's own heading, rendered
    print(f"{ui}/runs/flow-run/{flow_run_id}\nscreenshots: {out}, {answer_out}; artifacts: {', '.join(keys) or 'none'}; "
          f"answer rendered: {shown}")
    wanted = ("-results", "-answer", "-mlflow-run")
    if not all(any(key.endswith(end) for key in keys) for end in wanted) or not shown:
        sys.exit(1)


def main() -> None:
    from reid_models.config import load_settings, tracking_uri
    from tasks.tracking import ui_url

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("docs/img/mlflow_ui.png"))
    parser.add_argument("--prefect-flow-run", help="a flow run id: screenshot its page and its answer artifact instead")
    parser.add_argument("--prefect-ui", default="http://127.0.0.1:4200", help="the Prefect server's UI")
    args = parser.parse_args()
    if args.prefect_flow_run:
        return prefect_snapshot(args.prefect_flow_run, args.out, args.prefect_ui)
    settings = load_settings(args.params, args.profile, args.overrides)
    with mlflow_ui(tracking_uri(settings.tracking)) as base:
        url = ui_url(settings, base)
        dom = snapshot(url, args.out)
    from reid_models.report import load_results
    from reid_models.scenarios import Scenario
    from tasks.scenarios import report_dir

    keys = [Scenario(r.scenario, r.criterion, r.flops_reduction, r.adaptation, int(r.seed)).key
            for r in load_results(report_dir(settings)).itertuples()]  # a run's results: the runs to find
    listed = [key for key in keys if key in dom]
    print(f"{url}\nscreenshot: {args.out}; scenario runs listed on the page: {len(listed)} of {len(keys)}")
    if len(listed) < len(keys):
        sys.exit(1)


if __name__ == "__main__":
    main()
