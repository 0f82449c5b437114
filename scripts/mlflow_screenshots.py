"""Browsing check: what a tracked run looks like in the MLflow UI, as PNG screenshots in docs/images/.

    python scripts/mlflow_screenshots.py                      # trains a short synthetic run first
    python scripts/mlflow_screenshots.py --output-dir outputs  # the newest run of an existing store

Starts `mlflow server` on 127.0.0.1 (the emotionnet-mlflow-ui command line) and opens the experiment,
the run's overview, metric charts, artifacts (confusion matrix) and logged model pages in headless
Chromium (Debian's `chromium`: apt-get install -y chromium). Slow (a minute or more); not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from emotionnet.tracking.ui import LOOPBACK, server_command  # noqa: E402
from tests.training_utils import TINY_CONFIG, free_port, prepared_synthetic  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--run-all-compositor-stages-before-draw",  # without it the lazily drawn metric charts stay spinners
)  # fmt: skip


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


def screenshot(chromium: str, url: str, path: Path, profile: Path) -> None:
    # Metric pages list test, then train, then validation charts: a tall window shows them all.
    height = 2600 if url.endswith("metrics") else 1000
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--window-size=1600,{height}", "--virtual-time-budget=20000",
         f"--user-data-dir={profile}", f"--screenshot={path}", url],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    print(f"{path}  <-  {url}")


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
            model_id = run.data.tags.get("emotionnet.model_uri", "").removeprefix("models:/")
            pages = {
                "mlflow_experiment.png": f"{base}/runs",
                "mlflow_run_overview.png": run_page,
                "mlflow_run_metrics.png": f"{run_page}/model-metrics",
                "mlflow_run_system_metrics.png": f"{run_page}/system-metrics",
                "mlflow_run_confusion_matrix.png": f"{run_page}/artifacts/reports/test/confusion_matrix.png",
                "mlflow_run_misclassified.png": f"{run_page}/artifacts/reports/validation_epoch_001/misclassified.png",
            }
            if model_id:
                pages["mlflow_logged_model.png"] = f"{base}/models/{model_id}"
            args.images.mkdir(parents=True, exist_ok=True)
            for name, page in pages.items():
                screenshot(chromium, page, args.images / name, Path(tmp) / "chromium-profile")
        finally:
            os.killpg(server.pid, signal.SIGKILL)  # the server and its uvicorn worker
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
