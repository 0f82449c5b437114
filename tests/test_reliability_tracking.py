"""Tracking and inference under hostile inputs and faults: MLflow models that are never
unpickled, credentials that never reach a message, images whose header claims a huge size, runs that
create one SQLite store at the same moment, replay of a run that was never tracked, and corrupted model
files. docs/reliability.md lists each promise with its test here.

Real MLflow stores (SQLite; `mlflow models serve` in the slow test), real processes where the fault is
between processes, the tiny model of tests/test_evaluate.py.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_prep.schema import CLASS_NAMES
from emotionnet.cli.eval import main as eval_main
from emotionnet.cli.launch import main as launch_main
from emotionnet.cli.predict import main as predict_main
from emotionnet.cli.replay import main as replay_main
from emotionnet.cli.train import run as train_run
from emotionnet.config.loader import flatten, load, to_dict
from emotionnet.config.schema import TrackingConfig, TrainConfig
from emotionnet.exit_codes import ExitCode
from emotionnet.inference.ensemble import Ensemble, ModelLoadError
from emotionnet.inference.export import DESCRIPTION_NAME, WEIGHTS_NAME
from emotionnet.inference.predict import DETECT_MAX_PIXELS, MAX_IMAGE_PIXELS
from emotionnet.tracking.mlflow_tracker import MODEL_URI_TAG, RunRecord, log_best_model
from emotionnet.tracking.redact import REDACTED
from tests.test_evaluate import make_export, one_torch_thread  # noqa: F401 (an autouse fixture)
from tests.training_utils import REPO_ROOT, TINY_CONFIG, free_port, prepared_synthetic, read_jsonl, train_env

mlflow = pytest.importorskip("mlflow")

CPU = torch.device("cpu")
PASSWORD = "s3cret-7f1c9a"  # in every tracking URI of the credential tests; must never be printed


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_synthetic(tmp_path_factory.mktemp("reliability_tracking_data"), rows=300, seed=3)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("reliability_tracking_model") / "best", 0)


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store, as MLFLOW_TRACKING_URI (what `runs:/` URIs resolve against)."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def error_line(err: str, prog: str) -> str:
    """The one `<prog>: error: ...` line of a user error (MLflow may log other lines), no traceback."""
    assert "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    return line


def faces(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def log_export(export: Path, tmp_path: Path, **tracking) -> str:
    """`log_best_model` (what training calls) into a new run; returns the run id."""
    experiment = mlflow.create_experiment(f"e{time.time_ns()}", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log_best_model(export, TrackingConfig(**tracking), step=7, example_faces=faces(2))
    return run.info.run_id


# ---- 3: the MLflow model is the safetensors export, never a pickle --------------------------------


def test_the_logged_model_is_the_safetensors_export_and_loads_without_unpickling(tmp_path, store, export):
    run_id = log_export(export, tmp_path, registered_model_name="emo", registered_model_alias="champion")
    model_uri = mlflow.get_run(run_id).data.tags[MODEL_URI_TAG]
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl")))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {f"artifacts/best/{WEIGHTS_NAME}", f"artifacts/best/{DESCRIPTION_NAME}", "MLmodel"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pth", ".pt", ".bin"))]

    expected = Ensemble.load([str(export)], CPU).predict_proba(torch.from_numpy(faces()))
    for uri in (model_uri, f"runs:/{run_id}/model", "models:/emo@champion"):
        loaded = Ensemble.load([uri], CPU).predict_proba(torch.from_numpy(faces()))
        torch.testing.assert_close(loaded, expected, rtol=0, atol=0)
    # MLflow's own loader (what `mlflow models serve` runs): uint8 faces in, class probabilities out.
    served = mlflow.pyfunc.load_model("models:/emo@champion").predict(faces())
    assert list(served.columns) == list(CLASS_NAMES)
    np.testing.assert_allclose(served.to_numpy(), expected.numpy(), rtol=0, atol=0)


class Payload:
    """Unpickling this creates `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class Trojan(torch.nn.Module):
    def __init__(self, marker: Path):
        super().__init__()
        self.linear = torch.nn.Linear(2, 7)
        self.payload = Payload(marker)

    def forward(self, x):
        return self.linear(x)


def test_a_pickled_mlflow_model_is_refused_without_unpickling_it(tmp_path, store, capsys, data_dir):
    """What the registry holds is not trusted: a model in another format (here a pickled torch module
    whose unpickling runs code) is refused in one line, and nothing in it runs."""
    import mlflow.pytorch

    marker = tmp_path / "code-ran"
    experiment = mlflow.create_experiment("trojan", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.pytorch.log_model(
            Trojan(marker), name="model", serialization_format="pickle", pip_requirements=[]
        )
    marker.unlink(missing_ok=True)  # logging pickled it, and MLflow may have loaded it back to check it
    uri = f"runs:/{run.info.run_id}/model"
    with pytest.raises(ModelLoadError) as refused:
        Ensemble.load([uri], CPU)
    assert not marker.exists()  # nothing was unpickled
    assert "is not an EmotionNet MLflow model" in str(refused.value)
    assert eval_main([uri, str(data_dir), "--no-progress"]) == ExitCode.BAD_INPUT
    assert "is not an EmotionNet MLflow model" in error_line(capsys.readouterr().err, "emotionnet-eval")
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_mlflow_models_serve_answers_with_class_probabilities(tmp_path, store, export):
    run_id = log_export(export, tmp_path)
    port = free_port()
    env = {
        **train_env(),
        "MLFLOW_TRACKING_URI": store,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "serve.log"
                ).read_text()
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": faces().tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, 9)  # the CLI and its uvicorn worker
        server.wait()
    expected = Ensemble.load([str(export)], CPU).predict_proba(torch.from_numpy(faces()))
    assert [list(p) for p in predictions] == [list(CLASS_NAMES)] * len(expected)
    served = np.array([[p[name] for name in CLASS_NAMES] for p in predictions])
    np.testing.assert_allclose(served, expected.numpy(), rtol=1e-6, atol=1e-7)


# ---- 5: credentials in tracking.uri never reach a message -----------------------------------------


def secret_uri() -> str:
    """An unreachable server, with credentials in its URI."""
    return f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"


def printed(capfd, caplog) -> str:
    """Everything the commands wrote to stdout/stderr, and every log record."""
    out, err = capfd.readouterr()
    return out + err + "\n".join(r.getMessage() for r in caplog.records)


def test_credentials_in_the_tracking_uri_stay_out_of_training_output(tmp_path, data_dir, capfd, caplog):
    base = ["--config", str(TINY_CONFIG), f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}",
            "run.max_steps=2", "tracking.system_metrics=false"]  # fmt: skip
    code, _ = train_run([*base, "run.run_name=strict", f"tracking.uri={secret_uri()}"])
    text = printed(capfd, caplog)
    assert code == ExitCode.BAD_INPUT and f"http://{REDACTED}@127.0.0.1" in text
    assert PASSWORD not in text

    # optional tracking: a warning, training untracked; then a replay against the same dead server
    code, _ = train_run(
        [*base, "run.run_name=optional", f"tracking.uri={secret_uri()}", "tracking.optional=true"]
    )
    assert code == ExitCode.OK
    assert replay_main([str(tmp_path / "optional"), "--tracking-uri", secret_uri()]) == ExitCode.BAD_INPUT
    text = printed(capfd, caplog)
    assert "training without MLflow tracking" in text and "emotionnet-mlflow-replay:" in text
    assert PASSWORD not in text
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]


def test_credentials_in_the_tracking_uri_stay_out_of_eval_and_launcher_output(
    tmp_path, monkeypatch, export, data_dir, capfd, caplog
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri())
    code = eval_main([str(export), str(data_dir), "--mlflow-run-id", "0" * 32, "--no-progress"])
    assert code == ExitCode.BAD_INPUT
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = secret_uri()
    args = ["--dry-run", "--cpu", "--processes", "1", "--config", str(TINY_CONFIG), f"tracking.uri={uri}"]
    assert launch_main(args) == ExitCode.OK
    assert launch_main(["slurm", *args]) == ExitCode.OK
    text = printed(capfd, caplog)
    assert "emotionnet-eval: error:" in text and "tracking.uri=" in text
    assert PASSWORD not in text


# ---- 6: huge images are refused from their header; large ones are searched downscaled --------------


def write_black_png(path: Path, width: int, height: int) -> Path:
    """An 8-bit grayscale PNG written block by block (a 20000x20000 one is 390 KB on disk), so that the
    test never holds the pixels it claims."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = 256
    block = b"\x00" * ((width + 1) * rows)  # each row: filter byte 0, then black pixels
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        deflate = zlib.compressobj(9)
        for start in range(0, height, rows):
            f.write(chunk(b"IDAT", deflate.compress(block[: (width + 1) * min(rows, height - start)])))
        f.write(chunk(b"IDAT", deflate.flush()) + chunk(b"IEND", b""))
    return path


MEASURE_PREDICT = """
import json, resource, sys
from emotionnet.cli.predict import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(sys.argv[1:])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "grew_mb": (after - before) / 1024}))
"""


def test_a_huge_image_is_refused_from_its_header_and_memory_stays_bounded(tmp_path, export):
    """A 390 KB PNG of 20000x20000 pixels took 13.8 GB before it was refused from its header; a 7000x7000
    one (49 MP, under the limit) 2.5 GB before faces were searched in a downscaled copy. Measured in a
    fresh process: how much its peak memory grows past the imports."""
    huge = write_black_png(tmp_path / "huge.png", 20000, 20000)
    large = write_black_png(tmp_path / "large.png", 7000, 7000)
    assert huge.stat().st_size < 1_000_000 and 7000 * 7000 <= MAX_IMAGE_PIXELS
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_PREDICT, "--model", str(export), str(huge), str(large), "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=train_env(),
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    *lines, measured = done.stdout.strip().splitlines()
    result = json.loads(measured)
    assert result["code"] == ExitCode.BAD_INPUT  # one file could not be used
    assert lines == [
        f"{huge}: error: 20000x20000 pixels (400 MP) is over the limit of 50 MP; downscale the image first",
        f"{large}: no face found",
    ]
    # the large image as BGR + gray is ~200 MB; detection on its full 49 MP alone took ~1.4 GB more
    assert result["grew_mb"] < 500, result


def test_faces_of_a_large_photo_are_found_in_a_downscaled_copy_and_boxed_in_its_pixels(
    tmp_path, capsys, export, photo
):
    small = cv2.imread(str(photo))
    big = cv2.resize(small, None, fx=5, fy=5, interpolation=cv2.INTER_CUBIC)  # 2560x3000: 7.7 MP
    assert big.shape[0] * big.shape[1] > DETECT_MAX_PIXELS
    cv2.imwrite(str(tmp_path / "big.png"), big)
    assert predict_main(["--model", str(export), str(photo), str(tmp_path / "big.png"), "--json"]) == 0
    boxes = [image["faces"][0]["box"] for image in json.loads(capsys.readouterr().out)["images"]]
    (x, y, w, h), (bx, by, bw, bh) = boxes
    assert abs((bx + bw / 2) - 5 * (x + w / 2)) < 5 * 20 and abs((by + bh / 2) - 5 * (y + h / 2)) < 5 * 20
    assert 0.8 < bw / (5 * w) < 1.25


# ---- 8: runs that start at once in a new output directory ------------------------------------------


CONNECT_EACH_TRY = """
import sys, time
from pathlib import Path
from emotionnet.config.schema import TrackingConfig
from emotionnet.tracking.mlflow_tracker import connect
import mlflow.store.tracking.sqlalchemy_store  # imported before the start line, as a run has by then
root, me, tries = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for attempt in range(tries):
    (root / f"ready-{attempt}-{me}").touch()
    while not (root / f"go-{attempt}").exists():
        time.sleep(0.001)
    print(connect(TrackingConfig(), root / f"outputs{attempt}").experiment_id, flush=True)
"""


@pytest.mark.slow
def test_two_processes_creating_one_new_sqlite_store_at_once_both_get_it(tmp_path):
    """Two processes open the same new store at the same moment (both wait at a start line), three
    times: without the lock, one of them failed creating the tables every time."""
    env = {k: v for k, v in train_env().items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONNECT_EACH_TRY, str(tmp_path), name, "3"], cwd=REPO_ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]  # fmt: skip
    try:
        for attempt in range(3):
            deadline = time.monotonic() + 300
            while not all((tmp_path / f"ready-{attempt}-{name}").exists() for name in ("a", "b")):
                exited = [p.communicate() for p in procs if p.poll() is not None]
                assert time.monotonic() < deadline and not exited, exited
                time.sleep(0.01)
            (tmp_path / f"go-{attempt}").touch()
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [(code, out.split()) for code, out, _ in results] == [(0, ["1", "1", "1"])] * 2, results


@pytest.mark.slow
def test_two_runs_starting_at_once_in_a_new_output_dir_both_train_tracked(tmp_path, data_dir):
    env = {k: v for k, v in train_env().items() if k != "MLFLOW_TRACKING_URI"}
    for attempt in range(3):
        output_dir = tmp_path / f"outputs{attempt}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "emotionnet.cli.train", "--config", str(TINY_CONFIG),
                 f"data.data_dir={data_dir}", f"run.output_dir={output_dir}", f"run.run_name=run{k}",
                 "run.max_steps=2", "tracking.log_model=false", "tracking.system_metrics=false"],
                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for k in range(2)
        ]  # fmt: skip
        errors = [p.communicate(timeout=600)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
        client = mlflow.MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("emotionnet").experiment_id])
        assert sorted((r.info.run_name, r.info.status) for r in runs) == [
            ("run0", "FINISHED"),
            ("run1", "FINISHED"),
        ]


# ---- 13: replay creates the MLflow run of a run that was never tracked ----------------------------


@pytest.mark.slow
def test_replay_creates_the_mlflow_run_of_a_run_that_was_never_tracked(tmp_path, data_dir, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    code, trainer = train_run([
        "--config", str(TINY_CONFIG), f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}",
        "run.run_name=offline", "run.max_steps=10", "run.log_every_steps=5", f"tracking.uri={dead}",
        "tracking.optional=true", "tracking.registered_model_name=offline-model", "tracking.tags.team=vision",
    ])  # fmt: skip
    run_dir = tmp_path / "offline"
    assert code == ExitCode.OK and not (run_dir / "mlflow_run.json").exists()
    capsys.readouterr()

    store = f"sqlite:///{tmp_path / 'later' / 'mlflow.db'}"
    assert replay_main([str(run_dir), "--tracking-uri", store]) == ExitCode.OK
    assert "was never tracked; created MLflow run" in capsys.readouterr().out
    record = RunRecord.read(run_dir)
    client = mlflow.MlflowClient(store)
    run = client.get_run(record.run_id)
    assert (run.info.run_name, run.info.status) == ("offline", "FINISHED")
    assert run.data.tags["team"] == "vision" and run.data.tags["emotionnet.replayed"] == "true"
    assert (run.data.tags["world_size"], run.data.tags["device"]) == ("1", "cpu")  # from environment.jsonl
    cfg = load(TrainConfig, run_dir / "config.yaml")
    assert run.data.params == {k: str(v) for k, v in flatten(to_dict(cfg)).items()}
    records = read_jsonl(run_dir / "metrics.jsonl")
    for key in ("train/loss", "validation/accuracy", "test/accuracy"):
        history = client.get_metric_history(record.run_id, key)
        assert sorted(m.step for m in history) == sorted(r["step"] for r in records if key in r)
    artifacts = {a.path for a in client.list_artifacts(record.run_id)}
    assert {"config.yaml", "dataset", "reports"} <= artifacts
    (dataset_input,) = run.inputs.dataset_inputs
    assert (
        dataset_input.dataset.digest
        == json.loads((data_dir / "manifest.json").read_text())["source"]["sha256"][:32]
    )
    # best/ as the model, registered as configured, predicting what best/ predicts
    best = Ensemble.load([str(run_dir / "best")], CPU).predict_proba(torch.from_numpy(faces()))
    mlflow.set_tracking_uri(store)
    for uri in (run.data.tags[MODEL_URI_TAG], "models:/offline-model/1"):
        logged = Ensemble.load([uri], CPU).predict_proba(torch.from_numpy(faces()))
        torch.testing.assert_close(logged, best, rtol=0, atol=0)

    assert replay_main([str(run_dir), "--tracking-uri", store]) == ExitCode.OK  # the same run, nothing new
    assert "uploaded 0 metric values" in capsys.readouterr().out
    assert [r.info.run_id for r in client.search_runs([record.experiment_id])] == [record.run_id]


# ---- 17: corrupted model files, and hints that name what exists -----------------------------------


def _truncate(directory: Path) -> None:
    weights = directory / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])


def _describe(model: dict | None = None, **changes):
    """A description with `changes` (and `model` merged into its model section)."""

    def change(directory: Path) -> None:
        path = directory / DESCRIPTION_NAME
        description = {**json.loads(path.read_text()), **changes}
        description["model"].update(model or {})
        path.write_text(json.dumps(description))

    return change


CORRUPTIONS = {
    "truncated weights": (_truncate, "not a readable safetensors file"),
    "garbage weights": (
        lambda d: (d / WEIGHTS_NAME).write_bytes(os.urandom(4096)),
        "not a readable safetensors",
    ),
    "empty weights": (lambda d: (d / WEIGHTS_NAME).write_bytes(b""), "not a readable safetensors file"),
    "description not JSON": (lambda d: (d / DESCRIPTION_NAME).write_text("{not json"), DESCRIPTION_NAME),
    "description not UTF-8": (
        lambda d: (d / DESCRIPTION_NAME).write_bytes(b"\xff\xfe\x00"),
        DESCRIPTION_NAME,
    ),
    "wrong class count": (_describe(class_names=["a", "b"]), "2 class names for a model of 7 classes"),
    "another input size": (
        _describe(preprocessing={"input_size": 64, "mean": 0.5, "std": 0.25}),
        "input_size",
    ),
    "weights of another model": (_describe(model={"d_model": 64}), "does not fit the model"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_corrupted_model_is_one_line_exit_2_in_eval_and_predict(
    tmp_path, export, data_dir, capsys, corruption
):
    corrupt, reason = CORRUPTIONS[corruption]
    model = tmp_path / "best"
    model.mkdir()
    for file in (WEIGHTS_NAME, DESCRIPTION_NAME):
        (model / file).write_bytes((export / file).read_bytes())
    corrupt(model)
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), faces(1)[0])
    for command, args in (
        (eval_main, [str(model), str(data_dir)]),
        (predict_main, ["--model", str(model), str(face)]),
    ):
        assert command([*args, "--no-progress"]) == ExitCode.BAD_INPUT
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        line = error_line(err, "emotionnet-eval" if command is eval_main else "emotionnet-predict")
        assert str(model) in line and reason in line


def test_the_bad_rows_hint_of_train_names_what_training_has(tmp_path, synth_csv, capsys):
    lines = synth_csv.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0] + lines[1] + "9,1 2 3,Training\n")
    code, _ = train_run(["--config", str(TINY_CONFIG), "--csv_file", str(bad), f"run.output_dir={tmp_path / 'out'}",
                         f"data.prep_cache_dir={tmp_path / 'cache'}", "tracking.enabled=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT and "Traceback" not in err
    assert f"`emotionnet-prep {bad} DIR --on-bad-rows quarantine`" in err
    assert "data.data_dir=DIR (or --data_dir DIR)" in err


def test_the_bad_rows_hint_of_eval_names_the_prep_command(tmp_path, synth_csv, export, capsys):
    lines = synth_csv.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0] + lines[1] + "9,1 2 3,Training\n")
    assert eval_main([str(export), str(bad), "--no-progress"]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    # emotionnet-eval has no --on-bad-rows: the flag may only appear as emotionnet-prep's
    assert f"`emotionnet-prep {bad} DIR --on-bad-rows quarantine`" in err
    assert err.count("--on-bad-rows") == 1
