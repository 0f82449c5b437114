"""Browsing check: what a tracked run looks like in the MLflow UI, as PNG screenshots in docs/images/.

    python scripts/mlflow_screenshots.py                      # trains a short synthetic run first
    python scripts/mlflow_screenshots.py --output-dir outputs  # the newest run of an existing store

Starts `mlflow server` on 127.0.0.1 (the emotionnet-mlflow-ui command line) and, in headless Chromium
(Debian's `chromium`: apt-get install -y chromium) driven over the DevTools protocol, opens the experiment's
runs in their chart view (every metric's chart), the run's overview, and its per-class bar chart and confusion
matrix (those `emotionnet-eval --mlflow-run-id` logged, else the trainer's). The UI is set to its
model-training layout, not the GenAI one. Slow (a minute or more); not a test. To show a run that learns,
point it at a copy of a real store (the server may migrate the database): docs/images/ holds the FER2013
CPU recipe's run, evaluated with `emotionnet-eval <run>/best dataset/fer2013 --tta flip --mlflow-run-id <id>`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from emotionnet.tracking.ui import LOOPBACK, server_command  # noqa: E402
from tests.training_utils import TINY_CONFIG, free_port, prepared_synthetic  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--remote-debugging-port=0",
)  # fmt: skip
# The UI's own preferences (localStorage, `<key>_v<version>`, JSON values): the model-training layout rather
# than GenAI's, and the assistant panel, which opens itself on a local server's first load, kept shut.
UI_PREFERENCES = {
    "mlflow.workflowType_v1": '"machine_learning"',
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
}
WIDTH = 1600
# A page is drawn once none of these placeholders (skeletons, spinners) has been left for two polls in a row.
BUSY = "[class*='skeleton' i], [class*='spinner' i], [class*='spin-' i], [aria-busy='true'], [role='progressbar']"
# Only those in the window count: charts below it are drawn when scrolled to, never in a screenshot.
BUSY_IN_VIEW = (
    f"Array.from(document.querySelectorAll({BUSY!r})).filter(e => {{ const r = e.getBoundingClientRect(); "
    "return r.width > 0 && r.top < innerHeight && r.bottom > 0; }).length"
)
SETTLE_S, LOAD_TIMEOUT_S = 4, 90


def train_demo_run(output_dir: Path) -> None:
    from emotionnet.cli.train import run

    data = prepared_synthetic(output_dir / "data", rows=600)
    code, _ = run(
        [
            "--config", str(TINY_CONFIG), f"data.data_dir={data}", f"run.output_dir={output_dir}",
            "run.num_epochs=2", "run.log_every_steps=5", "data.num_workers=0", "run.run_name=screenshot-demo",
            "tracking.system_metrics_interval_s=2",
        ]
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"demo training failed with exit code {code}")


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server at {url} did not come up")


class Page:
    """One Chromium tab driven over the DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:  # events (no "id") and stale replies are skipped
            reply = await self.ws.receive_json(timeout=120)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def open(self, url: str, height: int) -> None:
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await self.call("Page.navigate", url="about:blank")
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(SETTLE_S)
        deadline, idle = time.monotonic() + LOAD_TIMEOUT_S, 0
        while idle < 2 and time.monotonic() < deadline:
            busy = await self.call("Runtime.evaluate", expression=BUSY_IN_VIEW)
            idle = idle + 1 if busy["result"]["value"] == 0 else 0
            await asyncio.sleep(1)
        if idle < 2:
            print(f"warning: {url} still drawing after {LOAD_TIMEOUT_S} s", file=sys.stderr)
        await asyncio.sleep(2)  # charts animate in


async def capture(
    chromium: str, server_url: str, pages: dict[str, tuple[str, int]], images: Path, profile: Path
) -> None:
    import aiohttp

    browser = await asyncio.create_subprocess_exec(
        chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        while b"DevTools listening on" not in (line := await asyncio.wait_for(browser.stderr.readline(), 60)):
            if not line:
                raise SystemExit("chromium exited before its DevTools endpoint came up")
        port = urllib.parse.urlsplit(line.decode().split()[-1]).port
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                (target,) = [t for t in await response.json() if t["type"] == "page"]
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                await page.open(server_url, 1000)  # the server's origin, whose localStorage the UI reads
                script = "".join(f"localStorage.setItem({k!r}, {v!r});" for k, v in UI_PREFERENCES.items())
                await page.call("Runtime.evaluate", expression=script)
                for name, (url, height) in pages.items():
                    await page.open(url, height)
                    shot = await page.call("Page.captureScreenshot", format="png")
                    (images / name).write_bytes(base64.b64decode(shot["data"]))
                    print(f"{images / name}  <-  {url}")
    finally:
        browser.kill()
        await browser.wait()


def artifact_pages(client, run_id: str, run_page: str) -> dict[str, tuple[str, int]]:
    """The per-class bar chart and the confusion matrix of the run's evaluation: what `emotionnet-eval
    --mlflow-run-id` logged under evaluation/, else the trainer's test report, else its last validation one."""
    evaluation = [a.path for a in client.list_artifacts(run_id, "evaluation")]
    reports = sorted(a.path for a in client.list_artifacts(run_id, "reports") if a.is_dir)
    validations = [p for p in reports if Path(p).name.startswith("validation_epoch_")]
    report = "reports/test" if "reports/test" in reports else (validations[-1] if validations else None)
    report_files = [a.path for a in client.list_artifacts(run_id, report)] if report else []
    found = {
        "mlflow_run_per_class.png": [p for p in evaluation if p.endswith("_per_class.png")]
        + [p for p in report_files if p.endswith("/per_class.png")],
        "mlflow_run_confusion_matrix.png": [p for p in evaluation if Path(p).name.startswith("confusion")]
        + [p for p in report_files if p.endswith("/confusion_matrix.png")],
    }
    return {name: (f"{run_page}/artifacts/{paths[0]}", 1000) for name, paths in found.items() if paths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output-dir", type=Path, help="run.output_dir holding mlflow.db (default: train a demo run)"
    )
    parser.add_argument("--images", type=Path, default=REPO_ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("mlflow_screenshots: no chromium on PATH (apt-get install -y chromium)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="emotionnet-screens-") as tmp:
        output_dir = args.output_dir or Path(tmp) / "outputs"
        if args.output_dir is None:
            train_demo_run(output_dir)
        import mlflow

        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        log = (Path(tmp) / "server.log").open("w")
        server = subprocess.Popen(
            server_command(output_dir, LOOPBACK, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(url, server)
            client = mlflow.MlflowClient(url)
            experiment = client.get_experiment_by_name("emotionnet")
            (run,) = client.search_runs(
                [experiment.experiment_id], order_by=["start_time DESC"], max_results=1
            )
            base = f"{url}/#/experiments/{experiment.experiment_id}"
            run_page = f"{base}/runs/{run.info.run_id}"
            pages = {
                # The runs list in its chart view: evaluation bars, then the train and validation curves (the
                # run's own Model metrics tab shows the same charts).
                "mlflow_runs_charts.png": (f"{base}/runs?compareRunsMode=CHART", 2600),
                "mlflow_run_overview.png": (run_page, 2200),  # tags, then the metrics and parameters tables
                **artifact_pages(client, run.info.run_id, run_page),
            }
            args.images.mkdir(parents=True, exist_ok=True)
            asyncio.run(capture(chromium, url, pages, args.images, Path(tmp) / "chromium-profile"))
        finally:
            os.killpg(server.pid, signal.SIGKILL)  # the server and its uvicorn worker
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
