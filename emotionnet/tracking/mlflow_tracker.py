"""MLflow tracking of training runs: where runs go (`connect`, `build_trackers`), what a run logs (tags, the
dataset, the best model, `RunRecord`), and the `MlflowTracker` trainer callback. Configured by
`TrackingConfig` (emotionnet/config/schema.py).

Why MLflow's own API rather than accelerate's `MLflowTracker`: accelerate's tracker logs params and
scalars through `accelerator.log` only. It cannot log a dataset input, figures or a model, has no
system-metrics switch, and cannot reopen a run by id, which a requeued job needs to continue the same
run. `mlflow.start_run(run_id=..., log_system_metrics=True)` does all of that, and `log_best_model`
logs the best export into the run it opened, as a pyfunc over the safetensors export (pyfunc_model.py:
nothing pickled, loaded back without running logged code). Only the main process talks to MLflow.

Where runs go (the first that applies):
1. `tracking.uri` in the config (an explicit choice for this run),
2. the `MLFLOW_TRACKING_URI` environment variable (a site-wide server),
3. `sqlite:///<run.output_dir>/mlflow.db` with artifacts in `<run.output_dir>/mlartifacts/`;
   browse it with `emotionnet-mlflow-ui <run.output_dir>`.

Faults: the store is checked before the trainer is built (`build_trackers`); if it is unreachable,
training stops with one sentence (exit 2), or warns and trains untracked with `tracking.optional: true`.
If MLflow fails mid-run, the tracker warns once and stops talking to it for the rest of the run (a hung
server would otherwise stall every step); training goes on, metrics.jsonl keeps every metric, and
`emotionnet-mlflow-replay RUN_DIR` uploads them once the server is back. MLflow's HTTP retries are made
short (unless MLFLOW_HTTP_REQUEST_* are set) so a dead server costs seconds, not minutes.

Resume: the run id is kept in `<run_dir>/mlflow_run.json`. A resumed job reopens that run and skips
(metric, step) pairs MLflow already has: steps redone after a kill are not logged twice (the values
logged first stay; metrics.jsonl holds the redone ones).

Credentials: environment variables are never logged; config values whose key looks secret and
user:password parts of URLs are redacted (emotionnet/tracking/redact.py) in params, tags and config.yaml,
and in every message: our errors and warnings, and MLflow's own log lines.

Concurrency: runs that start at once in a new output directory create its SQLite store under a file
lock (`.mlflow.db.lock` beside it): creating the tables twice at once fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from data_prep.files import write_atomic
from data_prep.manifest import Manifest
from data_prep.schema import CLASS_NAMES, IMAGE_SIZE, MANIFEST_NAME
from emotionnet.config.loader import flatten, to_dict
from emotionnet.config.schema import TrackingConfig, TrainConfig
from emotionnet.data.augment import AUGMENT_GRID_NAME
from emotionnet.errors import UserError
from emotionnet.evaluation.reports import CURVES_NAME
from emotionnet.evaluation.result import EvalResult
from emotionnet.exit_codes import ExitCode
from emotionnet.inference.ensemble import Ensemble, load_model
from emotionnet.inference.onnx_export import ONNX_NAME, OnnxError, export_onnx
from emotionnet.run_layout import REPORTS, RunLayout
from emotionnet.tracking.redact import error_summary, redact_mlflow_logs, redact_text, redact_tree
from emotionnet.train.callbacks import TrainerCallback, TrainerView

if TYPE_CHECKING:
    from mlflow import MlflowClient


log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name in the run
MODEL_URI_TAG = "emotionnet.model_uri"  # run tag: the logged model's URI
MODEL_CODE = Path(__file__).with_name("mlflow_model_code.py")  # logged as the MLflow model's code
ERROR_TAG = "error"  # run tag of a FAILED run: the exception that ended it, as its traceback's last line
MAX_TAG_CHARS = 5000  # MLflow refuses longer tag values


SQLITE_PREFIX = "sqlite:///"
TRAINING_HINT = (
    "start the server or fix tracking.uri / MLFLOW_TRACKING_URI, or set tracking.optional=true to train "
    "without tracking"
)


class TrackingError(UserError):
    """The tracking store cannot be used; the message is one sentence for the user."""


@dataclass(frozen=True)
class TrackingTarget:
    uri: str
    experiment_id: str


def resolve_tracking_uri(cfg: TrackingConfig, output_dir: str | Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None for the store's default)."""
    if cfg.uri:
        return cfg.uri, None
    if env_uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return env_uri, None
    return local_store_uri(output_dir), (Path(output_dir).resolve() / "mlartifacts").as_uri()


def local_store_uri(output_dir: str | Path) -> str:
    """The default store: SQLite in the output directory (what emotionnet-mlflow-ui serves)."""
    return f"{SQLITE_PREFIX}{Path(output_dir).resolve() / 'mlflow.db'}"


def short_http_retries(cfg: TrackingConfig) -> None:
    """MLflow retries a failed request 7 times with exponential backoff (minutes); a training job
    should not wait that long on a dead server. Values already in the environment win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.http_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(cfg.http_timeout_s))


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Held while a process opens a SQLite store: two processes creating a new store's tables at once
    collide ("table _alembic_tmp_experiments already exists"). Other stores need no lock."""
    if not uri.startswith(SQLITE_PREFIX):
        yield
        return
    db = Path(uri.removeprefix(SQLITE_PREFIX))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f".{db.name}.lock"), "a") as lock:  # released when closed, or when killed
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def connect(cfg: TrackingConfig, output_dir: str | Path, hint: str = TRAINING_HINT) -> TrackingTarget:
    """Reach the store and get (or create) the experiment; TrackingError (ending with `hint`) if that fails."""
    from mlflow import MlflowClient

    redact_mlflow_logs()
    short_http_retries(cfg)
    uri, artifact_location = resolve_tracking_uri(cfg, output_dir)
    if artifact_location is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    try:
        with store_lock(uri):
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(cfg.experiment)
            if experiment is None:
                # The kind makes the MLflow UI open the experiment in its model-training view.
                experiment_id = client.create_experiment(
                    cfg.experiment,
                    artifact_location=artifact_location,
                    tags={"mlflow.experimentKind": "custom_model_development"},
                )
            elif experiment.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"MLflow experiment {cfg.experiment!r} at {redact_text(uri)} is deleted; restore it or "
                    "set another tracking.experiment"
                )
            else:
                experiment_id = experiment.experiment_id
    except TrackingError:
        raise
    except Exception as err:  # any store failure (HTTP, database, permissions) is reported the same way
        raise TrackingError(
            f"MLflow tracking at {redact_text(uri)} is not usable ({error_summary(err)}); {hint}"
        ) from err
    return TrackingTarget(uri, experiment_id)


def build_trackers(cfg: TrainConfig) -> list[TrainerCallback]:
    """Called on every process before the trainer is built: the main process checks the store, the
    others follow its verdict (so a bad store stops all ranks at once, before any training compute)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if not cfg.tracking.enabled:
        return []
    state = PartialState()
    verdict: list[TrackingTarget | str | None] = [None]
    if state.is_main_process:
        try:
            verdict = [connect(cfg.tracking, cfg.run.output_dir)]
        except TrackingError as err:
            verdict = [str(err)]
    verdict = broadcast_object_list(verdict)
    outcome = verdict[0]
    if isinstance(outcome, str):
        if not cfg.tracking.optional:
            raise TrackingError(outcome)
        if state.is_main_process:
            log.warning("%s; tracking.optional is set: training without MLflow tracking", outcome)
        return []
    if not state.is_main_process:
        return []
    return [MlflowTracker(cfg, outcome)]


# ---- what a run holds ------------------------------------------------------------------------------


def run_tags(trainer: TrainerView, extra: dict[str, str]) -> dict[str, str]:
    """The run's environment (as its run directory records it), its directory and the user's tags."""
    tags = {
        **trainer.environment,
        "run_dir": str(trainer.run_dir.resolve()),
        **{k: str(v) for k, v in redact_tree(extra, "tracking.tags").items()},
    }
    if commit := tags.get("git.commit"):
        tags["mlflow.source.git.commit"] = commit
    tags["mlflow.note.content"] = (
        f"EmotionNet, {tags['precision']} precision, {tags['world_size']} process(es) "
        f"({tags['distributed_type']}) on {tags['hosts']}. Run directory: `{tags['run_dir']}`."
    )
    return tags


def manifest_dataset(data_dir: str | Path):
    """The prep manifest as an MLflow dataset: per-split class counts, digest = the source's sha256."""
    import mlflow.data
    import pandas as pd

    manifest = Manifest.read(Path(data_dir))
    rows = [{"split": name, "rows": s.rows, **s.classes} for name, s in manifest.splits.items()]
    # MLflow warns that a local path matches its local source type twice, and that integer columns
    # cannot hold missing values; neither applies to a table of counts.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            pd.DataFrame(rows, columns=["split", "rows", *CLASS_NAMES]),
            source=str(Path(data_dir).resolve()),
            name=f"fer2013:{Path(manifest.source.path).name}",
            digest=manifest.source.sha256[:32],
        )
        _ = dataset.schema  # inferred (and cached) here, under the filter
    return dataset, manifest


def log_run_inputs(cfg: TrainConfig) -> None:
    """What a new MLflow run gets first (into the active run): the config as params and as config.yaml,
    the prep manifest as its dataset input and artifact. Secrets are redacted. (A replay long after
    training may find the dataset gone: then it has no dataset input.)"""
    import mlflow

    params = flatten(redact_tree(to_dict(cfg)))
    mlflow.log_params(params)
    config_text = yaml.safe_dump(redact_tree(to_dict(cfg)), sort_keys=False)
    mlflow.log_text(config_text, "config.yaml")
    if not (Path(cfg.data.data_dir) / MANIFEST_NAME).is_file():
        return
    dataset, manifest = manifest_dataset(cfg.data.data_dir)
    mlflow.log_input(dataset, context="training")
    mlflow.log_artifact(str(Path(cfg.data.data_dir) / MANIFEST_NAME), "dataset")
    mlflow.set_tags({"dataset.sha256": manifest.source.sha256, "dataset.fingerprint": manifest.fingerprint})


def logged_steps(client: MlflowClient, run_id: str) -> dict[str, set[int]]:
    """The steps MLflow holds for each of the run's (non-system) metrics."""
    metrics = client.get_run(run_id).data.metrics
    return {
        key: {m.step for m in client.get_metric_history(run_id, key)}
        for key in metrics
        if not key.startswith("system/")
    }


@dataclass(frozen=True)
class RunRecord:
    """`<run_dir>/mlflow_run.json`: which MLflow run this run directory logs to."""

    run_id: str
    experiment_id: str
    tracking_uri: str  # redacted: it is only compared and shown, never used to connect

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord | None:
        path = RunLayout(run_dir).mlflow_record
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def write(self, run_dir: Path) -> None:
        path = RunLayout(run_dir).mlflow_record
        write_atomic(path, json.dumps(self.__dict__, indent=2) + "\n")


def log_best_model(export_dir: Path, cfg: TrackingConfig, step: int, example_faces: np.ndarray | None = None):
    """Log an export as the active run's MLflow model (see pyfunc_model.py); registers it when configured.

    `example_faces` (uint8, N x 48 x 48) become the model's input example; zeros when none are given."""
    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    from emotionnet.tracking.pyfunc_model import EXPORT_ARTIFACT  # a slow import (mlflow.pyfunc): only here

    if example_faces is None:
        example_faces = np.zeros((2, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    loaded = load_model(str(export_dir), torch.device("cpu"))
    probabilities = Ensemble([loaded]).predict_proba(torch.from_numpy(example_faces)).numpy()
    with tempfile.TemporaryDirectory(prefix="emotionnet-mlflow-model-") as staging:
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(MODEL_CODE),  # models from code: nothing is pickled
            artifacts={EXPORT_ARTIFACT: str(with_onnx(export_dir, Path(staging)))},
            signature=infer_signature(
                example_faces, pd.DataFrame(probabilities, columns=list(loaded.class_names))
            ),
            input_example=example_faces,
            pip_requirements=[
                f"{package}=={importlib.metadata.version(package)}"
                for package in ("torch", "torchvision", "numpy", "pandas", "safetensors", "mlflow")
            ],
            registered_model_name=cfg.registered_model_name,
            metadata={"emotionnet_export": export_dir.name, "class_names": list(loaded.class_names)},
            step=step,
        )
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    if cfg.registered_model_alias and info.registered_model_version is not None:
        mlflow.MlflowClient().set_registered_model_alias(
            cfg.registered_model_name, cfg.registered_model_alias, info.registered_model_version
        )
    return info


def with_onnx(export_dir: Path, staging: Path) -> Path:
    """The export to log: `export_dir` when it has its model.onnx or the onnx extra is not installed,
    else a copy in `staging` with the ONNX file added (`best/` itself is left as training wrote it)."""
    if (export_dir / ONNX_NAME).is_file() or not all(
        importlib.util.find_spec(module) for module in ("onnx", "onnxruntime")
    ):
        return export_dir
    copy = shutil.copytree(export_dir, staging / export_dir.name)
    try:
        export_onnx(copy)
    except OnnxError as err:  # the model is logged all the same, without its ONNX file
        log.warning("the MLflow model carries no %s: %s", ONNX_NAME, err)
    return copy


def error_line(error: BaseException) -> str:
    """The exception as a traceback ends with it (`RuntimeError: ...`), credentials removed."""
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return redact_text(text)[:MAX_TAG_CHARS]


# ---- the callback ----------------------------------------------------------------------------------


def _tolerant(hook):
    """Run a hook only while tracking works; the first MLflow failure turns tracking off for the run."""

    @functools.wraps(hook)
    def wrapper(self: MlflowTracker, trainer: TrainerView, *args, **kwargs):
        if self.lost or (self.run_id is None and hook.__name__ != "on_start"):
            return None
        try:
            return hook(self, trainer, *args, **kwargs)
        except Exception as err:  # tracking must never stop training
            self._lose(trainer, err)
            return None

    return wrapper


class MlflowTracker(TrainerCallback):
    def __init__(self, cfg: TrainConfig, target: TrackingTarget):
        self.cfg = cfg
        self.tracking = cfg.tracking
        self.target = target
        self.run_id: str | None = None
        self.lost = False
        self._logged: dict[str, set[int]] = {}  # (metric, step) pairs MLflow already has

    # -- hooks --

    @_tolerant
    def on_start(self, trainer: TrainerView) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.target.uri)
        client = mlflow.MlflowClient()
        run_id = self._previous_run_id(trainer.run_dir, client)
        if self.tracking.system_metrics:
            mlflow.set_system_metrics_sampling_interval(self.tracking.system_metrics_interval_s)
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else self.target.experiment_id,
            run_name=None if run_id else trainer.run_dir.name,
            log_system_metrics=self.tracking.system_metrics,
        )
        self.run_id = run.info.run_id
        RunRecord(self.run_id, run.info.experiment_id, redact_text(self.target.uri)).write(trainer.run_dir)
        mlflow.set_tags(run_tags(trainer, self.tracking.tags))
        if run_id is None:
            log_run_inputs(self.cfg)
            mlflow.log_params(trainer.resolved)
        else:
            self._logged = logged_steps(client, run_id)
            self._log_new_params(client, trainer.resolved)
            log.info("continuing MLflow run %s from step %d", run_id, trainer.progress.step)
        grid = trainer.layout.reports / AUGMENT_GRID_NAME  # written by the trainer just before on_start
        if grid.is_file():
            self._upload(trainer, grid, REPORTS)

    @_tolerant
    def on_metrics(self, trainer: TrainerView, metrics: dict[str, float], step: int) -> None:
        import mlflow

        fresh = {k: float(v) for k, v in metrics.items() if step not in self._logged.get(k, ())}
        if fresh:
            mlflow.log_metrics(fresh, step=step)

    def on_evaluation(self, trainer: TrainerView, split: str, result: EvalResult, report_dir: Path) -> None:
        self._upload(trainer, report_dir, f"{REPORTS}/{report_dir.name}")

    def on_end(self, trainer: TrainerView, exit_code: int) -> None:
        import mlflow

        error = sys.exc_info()[1]  # the exception that ends the run, if any: this runs in its `finally`
        curves = trainer.layout.reports / CURVES_NAME
        if curves.is_file():
            self._upload(trainer, curves, REPORTS)
        if exit_code == ExitCode.OK and self.tracking.log_model and trainer.layout.best.is_dir():
            self._log_model(trainer)
        if self.run_id is None:
            return
        status = {ExitCode.OK: "FINISHED", ExitCode.PREEMPTED: "KILLED"}.get(exit_code, "FAILED")
        if status == "FAILED" and error is not None:
            self._tag_error(trainer, error)
        try:
            mlflow.end_run(status)  # pops the active run even when the server is gone
        except Exception as err:
            if not self.lost:
                self._lose(trainer, err)

    # -- helpers --

    @_tolerant
    def _tag_error(self, trainer: TrainerView, error: BaseException) -> None:
        import mlflow

        mlflow.set_tag(ERROR_TAG, error_line(error))

    @_tolerant
    def _upload(self, trainer: TrainerView, path: Path, artifact_path: str) -> None:
        import mlflow

        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    @_tolerant
    def _log_model(self, trainer: TrainerView) -> None:
        validation = trainer.splits["validation"].with_format("numpy")
        faces = np.asarray(validation[:4]["image"], dtype=np.uint8)
        log_best_model(trainer.layout.best, self.tracking, trainer.progress.best_step, faces)

    def _previous_run_id(self, run_dir: Path, client: MlflowClient) -> str | None:
        """The run this run directory already logs to, if it is in this store."""
        from mlflow.exceptions import MlflowException

        record = RunRecord.read(run_dir)
        if record is None:
            return None
        try:
            client.get_run(record.run_id)
        except MlflowException:
            log.warning(
                "MLflow run %s (from %s) is not in %s; starting a new MLflow run",
                record.run_id,
                record.tracking_uri,
                redact_text(self.target.uri),
            )
            return None
        return record.run_id

    def _log_new_params(self, client: MlflowClient, resolved: dict[str, str]) -> None:
        """On resume: params MLflow does not have yet (MLflow refuses to change a logged param)."""
        import mlflow

        existing = client.get_run(self.run_id).data.params
        params = {k: str(v) for k, v in flatten(redact_tree(to_dict(self.cfg))).items()} | resolved
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            log.info("params changed on resume, MLflow keeps the first values: %s", ", ".join(changed))
        if missing := {k: v for k, v in params.items() if k not in existing}:
            mlflow.log_params(missing)

    def _lose(self, trainer: TrainerView, err: Exception) -> None:
        self.lost = True
        log.warning(
            "MLflow tracking failed at step %d (%s); training continues without it. Every metric is in %s: "
            "run `emotionnet-mlflow-replay %s` when the tracking server is back.",
            trainer.progress.step,
            error_summary(err),
            trainer.metrics_log.path,
            trainer.run_dir,
        )
