"""What the user sees in the MLflow and Prefect UIs: a screenshot and the rendered page's text,
from a real browser (headless Chromium, Debian package `chromium`).

MLflow: starts `mlflow ui` on the run's tracking store (127.0.0.1, a free port), opens the link
that `reid-prune run` prints (the experiment's runs, chart view, FLOPs-vs-rank-1 saved view), saves
a screenshot and checks that the scenario runs are listed.

    .venv/bin/reid-prune run --profile quick
    .venv/bin/python -m flows.ui_snapshot --profile quick --out docs/img/mlflow_ui.png

Prefect: the Artifacts tab of a flow run on a running Prefect server with its UI (`make serve`),
and checks that the run's artifacts (results table, answer, MLflow link) are on the page.

    .venv/bin/python -m flows.ui_snapshot --prefect-flow-run <flow run id> --out docs/img/prefect_artifacts.png
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
    """The flow run's Artifacts tab; exits 1 unless each artifact's description is on the page."""
    url = f"{ui}/runs/flow-run/{flow_run_id}?tab=Artifacts"
    dom = snapshot(url, out, size="1600,1400")
    wanted = ("Every trained model", "Where to prune, in three sentences", "The MLflow parent run")
    found = [text for text in wanted if text in dom]
    print(f"{url}\nscreenshot: {out}; artifacts on the page: {len(found)} of {len(wanted)}")
    if len(found) < len(wanted):
        sys.exit(1)


def main() -> None:
    from reid_models.config import load_settings, tracking_uri
    from tasks.tracking import ui_url

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("docs/img/mlflow_ui.png"))
    parser.add_argument("--prefect-flow-run", help="a flow run id: screenshot its Artifacts tab instead")
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
