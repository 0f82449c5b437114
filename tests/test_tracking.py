"""MLflow tracking: a real `mlflow server` on loopback, the default local store, resume continuity, a
server that dies mid-run (+ replay), an unreachable server at start, and secrets kept out of runs."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_prep.schema import CLASS_NAMES
from emotionnet.cli.replay import main as replay_main
from emotionnet.cli.train import run as train_run
from emotionnet.config import loader as config_loader
from emotionnet.config.schema import TrainConfig
from emotionnet.inference.ensemble import Ensemble
from emotionnet.tracking.mlflow_tracker import RunRecord, build_trackers
from emotionnet.tracking.redact import REDACTED, redact_tree
from emotionnet.tracking.ui import LOOPBACK, server_command
from tests.training_utils import (
    REPO_ROOT,
    TINY_CONFIG,
    free_port,
    prepared_synthetic,
    read_jsonl,
    train_command,
)

mlflow = pytest.importorskip("mlflow")

PASSWORD = "hunter2-tracking-password-7c1e"
ENV_TOKEN = "envtoken-0b9d2f6a41"
CONFIG_TOKEN = "cfgtoken-5e8a1c93d2"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_synthetic(tmp_path_factory.mktemp("tracking_data"), rows=300)


@pytest.fixture
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def train(data_dir: Path, output_dir: Path, *overrides: str):
    """A short in-process run: 10 steps (one validation at the end), metrics every 5 steps."""
    code, trainer = train_run(
        [
            "--config", str(TINY_CONFIG), f"data.data_dir={data_dir}", f"run.output_dir={output_dir}",
            "run.max_steps=10", "run.log_every_steps=5", "data.num_workers=0",
            "tracking.system_metrics_interval_s=1", *overrides,
        ]
    )  # fmt: skip
    return code, trainer


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def all_artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= all_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


class MlflowServer:
    """`mlflow server` (the command emotionnet-mlflow-ui runs) on a free loopback port, restartable."""

    def __init__(self, store: Path):
        self.store = store
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        command = server_command(self.store, LOOPBACK, self.port)
        log = (self.store / "server.log").open("a")
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"mlflow server did not start: {(self.store / 'server.log').read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # A crash, not a shutdown: uvicorn's graceful stop waits for keep-alive clients to leave.
        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its uvicorn worker
        self.proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    yield server
    server.kill()


def wait_for_step(client, run_dir: Path, key: str, step: int, timeout: float = 240) -> str:
    """Poll until MLflow holds `key` at `step` for the run this run directory logs to; returns its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = RunRecord.read(run_dir) if run_dir.exists() else None
        if record is not None and step in steps(client, record.run_id, key):
            return record.run_id
        time.sleep(0.2)
    raise TimeoutError(f"MLflow never got {key} at step {step}")


# ---- a real server ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_run_against_server_is_complete(data_dir, tmp_path, mlflow_server, no_tracking_env):
    code, trainer = train(
        data_dir, tmp_path, "run.run_name=served", f"tracking.uri={mlflow_server.url}",
        "tracking.registered_model_name=emotionnet-test", "tracking.registered_model_alias=champion",
    )  # fmt: skip
    assert code == 0
    client = mlflow.MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("emotionnet")
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'served'")
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert RunRecord.read(trainer.run_dir).run_id == run_id

    # params: the whole resolved config, flattened, and what the launch derived from it (lr, global batch)
    expected = {k: str(v) for k, v in config_loader.flatten(config_loader.to_dict(trainer.cfg)).items()}
    assert run.data.params == {**expected, **trainer.resolved}
    assert trainer.resolved.keys() == {"optim.resolved_lr", "data.global_batch"}
    assert run.data.params["optim.lr"] == "0.003"

    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["git.commit"] == head.stdout.strip()
        assert tags["git.dirty"] in ("true", "false")
    assert tags["hosts"] == socket.gethostname()
    assert (tags["world_size"], tags["distributed_type"], tags["precision"]) == ("1", "single", "no")
    assert tags["version.torch"] == torch.__version__.split("+")[0]
    assert tags["version.mlflow"] == mlflow.__version__

    # per-step and per-epoch metrics, as in metrics.jsonl; system metrics from MLflow's monitor
    records = read_jsonl(trainer.run_dir / "metrics.jsonl")
    assert steps(client, run_id, "train/loss") == [5, 10]
    for key in ("train/lr", "train/images_per_s", "train/grad_norm"):
        assert steps(client, run_id, key) == [5, 10]
    validation = next(r for r in records if r["split"] == "validation")
    for key in ("validation/loss", "validation/accuracy", "validation/macro_f1"):
        (metric,) = client.get_metric_history(run_id, key)
        assert (metric.step, metric.value) == (10, pytest.approx(validation[key]))
    assert "test/accuracy" in run.data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)

    # the prep manifest as the run's dataset input, and as an artifact
    manifest = json.loads((data_dir / "manifest.json").read_text())
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == manifest["source"]["sha256"][:32]
    assert {t.value for t in dataset_input.tags} == {"training"}

    artifacts = all_artifacts(client, run_id)
    for name in ("validation_epoch_000", "test"):
        for file in ("confusion_matrix.png", "report.json", "report.md", "misclassified.png"):
            assert f"reports/{name}/{file}" in artifacts
    assert {"config.yaml", "dataset/manifest.json", "reports/training_curves.png"} <= artifacts
    assert "reports/augmentations.png" in artifacts  # the trainer's augmentation grid, mirrored at start
    report = json.loads(
        Path(client.download_artifacts(run_id, "reports/test/report.json", str(tmp_path))).read_text()
    )
    assert report["accuracy"] == pytest.approx(run.data.metrics["test/accuracy"])
    assert set(report["per_class"]["disgust"]) >= {"precision", "recall", "f1", "support"}

    # the logged model (the best/ export as a pyfunc) predicts exactly what best/ predicts, whether loaded
    # by our loader (the export itself, nothing unpickled) or served by MLflow's pyfunc
    mlflow.set_tracking_uri(mlflow_server.url)
    faces = np.asarray(trainer.splits["validation"].with_format("numpy")[:16]["image"], np.uint8)
    export = Ensemble.load([str(trainer.run_dir / "best")], torch.device("cpu"))
    expected = export.predict_proba(torch.from_numpy(faces))
    logged = Ensemble.load([tags["emotionnet.model_uri"]], torch.device("cpu"))
    torch.testing.assert_close(logged.predict_proba(torch.from_numpy(faces)), expected, rtol=0, atol=0)
    served = mlflow.pyfunc.load_model(tags["emotionnet.model_uri"]).predict(faces)
    assert list(served.columns) == list(export.class_names)
    np.testing.assert_allclose(served.to_numpy(), expected.numpy(), rtol=0, atol=0)
    version = client.get_model_version_by_alias("emotionnet-test", "champion")
    assert version.run_id == run_id


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_server_killed_mid_run_then_replay(data_dir, tmp_path, mlflow_server, no_tracking_env, caplog):
    client = mlflow.MlflowClient(mlflow_server.url)
    run_dir = tmp_path / "outage"
    killer = threading.Thread(
        target=lambda: (wait_for_step(client, run_dir, "train/loss", 10), mlflow_server.kill()), daemon=True
    )
    killer.start()
    code, trainer = train(
        data_dir, tmp_path, "run.run_name=outage", "run.max_steps=15", f"tracking.uri={mlflow_server.url}",
        "tracking.log_model=false",
    )  # fmt: skip
    killer.join(timeout=60)
    assert code == 0 and trainer.progress.step == 15
    warnings = [r.getMessage() for r in caplog.records if r.name == "emotionnet.tracking.mlflow_tracker"]
    assert len([w for w in warnings if "emotionnet-mlflow-replay" in w]) == 1  # warned once

    mlflow_server.start()
    run_id = RunRecord.read(run_dir).run_id
    # What got through before the outage: steps 5 and 10 (15 too when the kill lands a moment late);
    # the test evaluation came after it, so it is only in metrics.jsonl until the replay.
    assert steps(client, run_id, "train/loss")[:2] == [5, 10]
    assert steps(client, run_id, "test/accuracy") == []
    assert replay_main([str(run_dir)]) == 0
    records = read_jsonl(run_dir / "metrics.jsonl")
    for key in ("train/loss", "validation/accuracy", "test/accuracy"):
        assert steps(client, run_id, key) == sorted(r["step"] for r in records if key in r)
    assert steps(client, run_id, "train/loss") == [5, 10, 15]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert "reports/test/confusion_matrix.png" in all_artifacts(client, run_id)
    assert replay_main([str(run_dir)]) == 0  # idempotent: nothing new the second time
    assert steps(client, run_id, "train/loss") == [5, 10, 15]


# ---- the default local store --------------------------------------------------------------------


@pytest.mark.slow
def test_default_store_is_local_and_holds_no_secrets(
    data_dir, tmp_path, monkeypatch, no_tracking_env, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("EMOTIONNET_SERVICE_TOKEN", ENV_TOKEN)
    code, trainer = train(
        data_dir, tmp_path, "run.run_name=local", "tracking.log_model=false",
        f"tracking.tags.api_token={CONFIG_TOKEN}", "tracking.tags.team=vision",
    )  # fmt: skip
    assert code == 0
    # The closing summary offers the UI on this store (although MLflow has exported its URI meanwhile).
    assert f"emotionnet-mlflow-ui {tmp_path}" in capsys.readouterr().out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("emotionnet").experiment_id])
    assert run.info.run_name == "local" and run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert steps(client, run.info.run_id, "train/loss") == [5, 10]
    assert run.data.params["tracking.tags.api_token"] == REDACTED
    assert (run.data.tags["api_token"], run.data.tags["team"]) == (REDACTED, "vision")

    # no secret anywhere: params, tags, artifacts, and the raw store files
    secrets = (PASSWORD, ENV_TOKEN, CONFIG_TOKEN)
    visible = json.dumps([run.data.params, run.data.tags])
    assert not [s for s in secrets if s in visible]
    files = [tmp_path / "mlflow.db", *(tmp_path / "mlartifacts").rglob("*")]
    leaks = [(f, s) for f in files if f.is_file() for s in secrets if s.encode() in f.read_bytes()]
    assert not leaks


@pytest.mark.slow
def test_per_class_figures_are_one_table_and_one_bar_chart_per_evaluation(
    data_dir, tmp_path, no_tracking_env
):
    code, trainer = train(
        data_dir,
        tmp_path,
        "run.run_name=per_class",
        "tracking.log_model=false",
        "tracking.system_metrics=false",
    )
    assert code == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("emotionnet").experiment_id])
    run_id = run.info.run_id
    # no metric per class (each was a chart of its own), in MLflow or in metrics.jsonl
    assert {"validation/accuracy", "test/accuracy"} <= set(run.data.metrics)
    assert not [key for key in run.data.metrics if "accuracy_" in key]
    assert "accuracy_" not in (trainer.run_dir / "metrics.jsonl").read_text()

    artifacts = all_artifacts(client, run_id)
    for name in ("validation_epoch_000", "test"):
        assert {f"reports/{name}/per_class.csv", f"reports/{name}/per_class.png"} <= artifacts
    download = tmp_path / "download"
    with open(
        client.download_artifacts(run_id, "reports/test/per_class.csv", str(download)), newline=""
    ) as f:
        rows = list(csv.DictReader(f))
    report = json.loads(
        Path(client.download_artifacts(run_id, "reports/test/report.json", str(download))).read_text()
    )
    assert [row["class"] for row in rows] == list(CLASS_NAMES)
    for row in rows:
        expected = report["per_class"][row["class"]]
        assert (
            float(row["recall"]) == pytest.approx(expected["recall"])
            and int(row["support"]) == expected["support"]
        )
    chart = cv2.imread(client.download_artifacts(run_id, "reports/test/per_class.png", str(download)))
    assert chart.shape[1] > 600


# ---- resume -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_and_resumed_run_is_one_mlflow_run(data_dir, tmp_path, no_tracking_env):
    """SIGKILL after MLflow got step 15 (checkpoint at 10); the resumed run redoes 11-15 without
    logging step 15 twice, and continues in the same MLflow run."""
    args = [
        f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}", "run.run_name=requeued", "run.max_steps=25",
        "run.log_every_steps=5", "checkpoint.every_steps=10", "data.num_workers=0", "tracking.log_model=false",
        "tracking.system_metrics=false",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        train_command(*args), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_dir = tmp_path / "requeued"
    try:
        first_id = wait_for_step(client, run_dir, "train/loss", 15)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 15 in steps(client, first_id, "train/loss")

    code, trainer = train_run(["--config", str(TINY_CONFIG), *args, "run.resume=latest"])
    assert code == 0 and trainer.progress.step == 25
    assert RunRecord.read(run_dir).run_id == first_id
    runs = client.search_runs([client.get_experiment_by_name("emotionnet").experiment_id])
    assert [r.info.run_id for r in runs] == [first_id]
    assert runs[0].info.status == "FINISHED"
    for key in ("train/loss", "train/lr"):
        assert steps(client, first_id, key) == [5, 10, 15, 20, 25]  # no duplicates, no gaps
    assert steps(client, first_id, "validation/accuracy") == [25]


# ---- faults at start, redaction -----------------------------------------------------------------


def test_unreachable_server_stops_before_training(data_dir, tmp_path, capsys, no_tracking_env):
    dead = f"http://127.0.0.1:{free_port()}"
    code, trainer = train(data_dir, tmp_path, "run.run_name=dead", f"tracking.uri={dead}")
    assert (code, trainer) == (2, None)
    err = capsys.readouterr().err
    assert f"MLflow tracking at {dead} is not usable" in err and "tracking.optional=true" in err
    assert "Traceback" not in err
    run_dir = tmp_path / "dead"
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()


def test_optional_tracking_warns_and_trains_untracked(tmp_path, caplog, no_tracking_env):
    cfg = config_loader.load(
        TrainConfig,
        overrides=[
            f"tracking.uri=http://127.0.0.1:{free_port()}",
            "tracking.optional=true",
            f"run.output_dir={tmp_path}",
        ],
    )
    assert build_trackers(cfg) == []
    assert any("training without MLflow tracking" in r.getMessage() for r in caplog.records)


def test_alias_needs_a_registered_name():
    with pytest.raises(config_loader.ConfigError, match="registered_model_name"):
        config_loader.load(TrainConfig, overrides=["tracking.registered_model_alias=champion"])


def test_redaction():
    tree = {
        "tracking": {"uri": "https://bob:s3cret@mlflow.example.com/", "tags": {"api_key": "k", "team": "v"}},
        "auth": {"user": "x"},
        "optim": {"lr": 0.1},
    }
    assert redact_tree(tree) == {
        "tracking": {
            "uri": f"https://{REDACTED}@mlflow.example.com/",
            "tags": {"api_key": REDACTED, "team": "v"},
        },
        "auth": {"user": REDACTED},
        "optim": {"lr": 0.1},
    }
