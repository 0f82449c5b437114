"""emotionnet-mlflow-replay RUN_DIR: put what a tracking outage missed into the run's MLflow run.

Uploads every metrics.jsonl value whose (metric, step) MLflow does not have yet, re-uploads the report
files of `<run_dir>/reports/`, and closes the run as FINISHED when training finished (a `final/`
export exists) but the run was left RUNNING. Running it twice adds nothing the second time.

The run is the one in `<run_dir>/mlflow_run.json`; the store is --tracking-uri, else the URI recorded
there (unless it held credentials, which are not recorded), else MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from emotionnet.run_layout import MLFLOW_RECORD, REPORTS, RunLayout
from emotionnet.tracking.mlflow_tracker import (
    RunRecord,
    TrackingConfig,
    logged_steps,
    short_http_retries,
)
from emotionnet.tracking.redact import REDACTED
from emotionnet.train.metrics_log import MetricsLog

RECORD_FIELDS = ("step", "epoch", "split", "time")  # metrics.jsonl keys that are not metrics
BATCH = 1000  # MLflow's limit of metrics per log_batch call


class ReplayError(ValueError):
    """The run directory or the MLflow run cannot be used; one sentence for the user."""


def replay(run_dir: Path, tracking_uri: str | None = None) -> tuple[int, int]:
    """Upload the missing metric values; returns (uploaded, already there)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    record = RunRecord.read(run_dir)
    if record is None:
        raise ReplayError(f"{run_dir} has no {MLFLOW_RECORD}: it was never tracked with MLflow")
    uri = tracking_uri or (None if REDACTED in record.tracking_uri else record.tracking_uri)
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ReplayError(f"{run_dir}: the recorded tracking URI held credentials; pass --tracking-uri")
    short_http_retries(TrackingConfig())
    client = MlflowClient(uri)
    try:
        run = client.get_run(record.run_id)
        existing = logged_steps(client, record.run_id)
    except MlflowException as err:
        raise ReplayError(
            f"MLflow run {record.run_id} is not readable at {record.tracking_uri}: {err.message}"
        ) from err
    except Exception as err:  # connection refused, timeouts
        raise ReplayError(
            f"MLflow at {record.tracking_uri} is not reachable ({type(err).__name__}); try again later"
        ) from err

    missing, present = [], 0
    for entry in MetricsLog(RunLayout(run_dir).metrics).read():
        timestamp = int(entry.get("time", time.time()) * 1000)
        for key, value in entry.items():
            if key in RECORD_FIELDS:
                continue
            if entry["step"] in existing.get(key, ()):
                present += 1
            else:
                missing.append(Metric(key, float(value), timestamp, entry["step"]))
    for start in range(0, len(missing), BATCH):
        client.log_batch(record.run_id, metrics=missing[start : start + BATCH])
    if RunLayout(run_dir).reports.is_dir():
        client.log_artifacts(record.run_id, str(RunLayout(run_dir).reports), REPORTS)
    if run.info.status == "RUNNING" and RunLayout(run_dir).final.is_dir():
        client.set_terminated(record.run_id, "FINISHED")
    return len(missing), present
