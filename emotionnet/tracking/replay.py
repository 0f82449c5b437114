"""emotionnet-mlflow-replay RUN_DIR: put what a tracking outage missed into the run's MLflow run.

Uploads every metrics.jsonl value whose (metric, step) MLflow does not have yet, re-uploads the report
files of `<run_dir>/reports/`, and once training finished (a `final/` export exists) logs best/ as the
model if the run has none yet and closes the run as FINISHED. Running it twice adds nothing the second
time.

The run is the one in `<run_dir>/mlflow_run.json`; the store is --tracking-uri, else the URI recorded
there (unless it held credentials, which are not recorded), else MLFLOW_TRACKING_URI.

A run that was never tracked (MLflow was unreachable when it started and tracking.optional was set) has
no mlflow_run.json: replay creates its MLflow run from the run directory, as training would have (the
config as params and config.yaml, the dataset manifest when it is still there, tracking.tags, metrics,
reports, and best/ as the model once training finished; the run ends FINISHED, or KILLED when training
did not finish), and writes mlflow_run.json. Its store is --tracking-uri, else the config's
tracking.uri, else MLFLOW_TRACKING_URI, else the default store of the run's output directory
(`RUN_DIR/../mlflow.db`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from emotionnet.config.loader import ConfigError, load
from emotionnet.config.schema import TrainConfig
from emotionnet.errors import UserError
from emotionnet.inference.export import read_description
from emotionnet.run_layout import CONFIG, REPORTS, RunLayout
from emotionnet.tracking.mlflow_tracker import (
    MODEL_URI_TAG,
    RunRecord,
    TrackingConfig,
    TrackingError,
    connect,
    log_best_model,
    log_run_inputs,
    logged_steps,
    short_http_retries,
)
from emotionnet.tracking.redact import REDACTED, error_summary, redact_mlflow_logs, redact_text, redact_tree
from emotionnet.train.metrics_log import MetricsLog, MetricsLogError

RECORD_FIELDS = ("step", "epoch", "split", "time")  # metrics.jsonl keys that are not metrics
BATCH = 1000  # MLflow's limit of metrics per log_batch call


class ReplayError(UserError):
    """The run directory or the MLflow run cannot be used; one sentence for the user."""


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    uploaded: int  # metric values sent
    present: int  # metric values MLflow already had
    created: bool  # the MLflow run was created by this replay (the run was never tracked)


def replay(run_dir: Path, tracking_uri: str | None = None) -> ReplayResult:
    """Upload what the run's MLflow run misses, creating that run when there is none."""
    from mlflow.exceptions import MlflowException

    redact_mlflow_logs()
    try:
        return _replay(RunLayout(run_dir), tracking_uri)
    except ReplayError:
        raise
    # The store failed part-way (the next replay sends the rest), or best/ cannot be logged as the model.
    except (MlflowException, OSError, ValueError) as err:
        raise ReplayError(
            f"replaying {run_dir} into MLflow failed ({error_summary(err)}); run it again when MLflow works"
        ) from err


def _replay(layout: RunLayout, tracking_uri: str | None) -> ReplayResult:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    record = RunRecord.read(layout.root)
    created = record is None
    if record is None:
        record, uri = _create_run(layout, tracking_uri)
    else:
        uri = tracking_uri or (None if REDACTED in record.tracking_uri else record.tracking_uri)
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ReplayError(
                f"{layout.root}: the recorded tracking URI held credentials; pass --tracking-uri"
            )
        short_http_retries(TrackingConfig())
    client = MlflowClient(uri)
    try:
        run = client.get_run(record.run_id)
        existing = logged_steps(client, record.run_id)
    except MlflowException as err:
        raise ReplayError(
            f"MLflow run {record.run_id} is not readable at {redact_text(uri)}: {error_summary(err)}"
        ) from err
    except Exception as err:  # connection refused, timeouts
        raise ReplayError(
            f"MLflow at {redact_text(uri)} is not reachable ({type(err).__name__}); try again later"
        ) from err
    uploaded, present = _upload(client, record.run_id, layout, existing)
    if layout.final.is_dir():  # training finished
        _log_missing_model(layout, uri, run)
        if run.info.status != "FINISHED":
            client.set_terminated(record.run_id, "FINISHED")
    return ReplayResult(record.run_id, uploaded, present, created)


def _create_run(layout: RunLayout, tracking_uri: str | None) -> tuple[RunRecord, str]:
    """The MLflow run of a run directory that was never tracked, with what training logs at its start
    (config, dataset, tags); recorded in mlflow_run.json at once, so that a replay cut short is continued
    in this run. It is KILLED until a finished training's replay marks it FINISHED."""
    import mlflow

    cfg = _run_config(layout)
    if tracking_uri:  # where the run goes; its params keep the config it was trained with
        tracking = dataclasses.replace(cfg.tracking, uri=tracking_uri)
    elif cfg.tracking.uri and REDACTED in cfg.tracking.uri:
        raise ReplayError(
            f"{layout.config}: tracking.uri held credentials, which are not recorded; pass --tracking-uri"
        )
    else:
        tracking = cfg.tracking
    try:
        target = connect(tracking, layout.root.parent, hint="start the server or pass --tracking-uri")
    except TrackingError as err:
        raise ReplayError(f"{layout.root} was never tracked, and {err}") from err
    # The first start's environment: what a live tracker would have tagged.
    first_start = next(iter(MetricsLog(layout.environment).read()), {})
    tags = {
        **{k: str(v) for k, v in first_start.items() if k not in ("time", "step")},
        **{k: str(v) for k, v in redact_tree(cfg.tracking.tags, "tracking.tags").items()},
        "run_dir": str(layout.root.resolve()),
        "emotionnet.replayed": "true",
        "mlflow.note.content": f"EmotionNet run directory `{layout.root.resolve()}`, tracked afterwards by "
        "emotionnet-mlflow-replay (MLflow was not reachable when training started).",
    }
    mlflow.set_tracking_uri(target.uri)
    run = mlflow.start_run(
        experiment_id=target.experiment_id, run_name=layout.root.name, tags=tags, log_system_metrics=False
    )
    record = RunRecord(run.info.run_id, target.experiment_id, redact_text(target.uri))
    try:
        record.write(layout.root)
        log_run_inputs(cfg)
    finally:
        mlflow.end_run("KILLED")
    return record, target.uri


def _log_missing_model(layout: RunLayout, uri: str, run) -> None:
    """best/ as the run's model, as the end of training logs it, when the run has no model yet."""
    import mlflow

    if MODEL_URI_TAG in run.data.tags or not layout.best.is_dir():
        return
    tracking = _run_config(layout).tracking
    if not tracking.log_model:
        return
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run.info.run_id, log_system_metrics=False):  # ends FINISHED
        log_best_model(layout.best, tracking, read_description(layout.best).metadata.get("step", 0))


def _upload(client, run_id: str, layout: RunLayout, existing: dict[str, set[int]]) -> tuple[int, int]:
    """Send the metric values MLflow does not have and the reports; returns (uploaded, already there)."""
    from mlflow.entities import Metric

    try:
        entries = MetricsLog(layout.metrics).read()
    except MetricsLogError as err:
        raise ReplayError(str(err)) from err
    missing, present = [], 0
    for entry in entries:
        timestamp = int(entry.get("time", time.time()) * 1000)
        for key, value in entry.items():
            if key in RECORD_FIELDS:
                continue
            if entry["step"] in existing.get(key, ()):
                present += 1
            else:
                missing.append(Metric(key, float(value), timestamp, entry["step"]))
    for start in range(0, len(missing), BATCH):
        client.log_batch(run_id, metrics=missing[start : start + BATCH])
    if layout.reports.is_dir():
        client.log_artifacts(run_id, str(layout.reports), REPORTS)
    return len(missing), present


def _run_config(layout: RunLayout) -> TrainConfig:
    """The run's resolved config.yaml."""
    if not layout.config.is_file():
        raise ReplayError(f"{layout.root} has no {CONFIG}: it is not a training run directory")
    try:
        return load(TrainConfig, layout.config)
    except (ConfigError, OSError) as err:
        raise ReplayError(f"{layout.config}: {err}") from err
