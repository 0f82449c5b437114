"""`emotionnet-eval`: CSV vs Arrow agreement, JSON output, ensembles, the default model, bad input, MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_prep.prepare import PrepOptions, prepare
from data_prep.schema import CLASS_NAMES
from emotionnet.cli.eval import main
from emotionnet.config.schema import TrackingConfig
from emotionnet.data.loaders import load_splits
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.evaluation.evaluate import evaluate, metric_prefix
from emotionnet.inference.ensemble import DEFAULT_MODEL_ENV, Ensemble
from emotionnet.inference.export import load_export, save_export
from emotionnet.model.emotionnet import EmotionNet, ModelConfig
from emotionnet.tracking.mlflow_tracker import log_best_model

TINY = ModelConfig(
    backbone_stages=3, output_stride=8, d_model=32, depth=1, heads=2, spatial_heads=2, head_hidden=32
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread only waits for a free core
    (measured 30x slower under load), so run single-threaded and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_export(directory: Path, seed: int) -> Path:
    """A tiny random EmotionNet export whose predictions vary from face to face.

    At initialization the network's outputs are nearly the same for every input (one class everywhere,
    which would make accuracy comparisons vacuous); scaling the weights spreads them out."""
    torch.manual_seed(seed)
    model = EmotionNet(TINY)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(3)
    return save_export(directory, model.state_dict(), TINY, Preprocessing(input_size=TINY.input_size))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return make_export(root / "run0" / "best", 0), make_export(root / "run1" / "best", 1)


@pytest.fixture(scope="module")
def arrow_dir(synth_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "fer"
    prepare(synth_csv, out, PrepOptions(progress=False))
    return out


def run_json(capsys, *args) -> dict:
    code = main([*map(str, args), "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def run_error(capsys, *args) -> str:
    code = main([*map(str, args), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2  # ExitCode.BAD_INPUT
    assert "Traceback" not in err
    return err.strip()


def test_csv_of_one_split_matches_its_arrow_split(capsys, tmp_path, synth_csv, arrow_dir, models):
    # A CSV holding only the PrivateTest rows (like the FER2013 test file), scored whole.
    lines = synth_csv.read_text().splitlines(keepends=True)
    test_csv = tmp_path / "private_only.csv"
    test_csv.write_text(
        lines[0] + "".join(line for line in lines[1:] if line.rstrip().endswith(",PrivateTest"))
    )

    from_csv = run_json(capsys, models[0], test_csv, "--confusion-png", tmp_path / "csv.png")
    from_arrow = run_json(
        capsys, models[0], arrow_dir, "--split", "test", "--confusion-png", tmp_path / "a.png"
    )

    assert from_csv["split"] == "all" and from_arrow["split"] == "test"
    assert from_csv["n"] == from_arrow["n"] == 30
    assert from_csv["accuracy"] == from_arrow["accuracy"]
    assert from_csv["confusion_matrix"] == from_arrow["confusion_matrix"]
    assert from_csv["macro_f1"] == pytest.approx(from_arrow["macro_f1"])
    # The weights spread the predictions: at least two classes are predicted.
    assert sum(1 for column in zip(*from_csv["confusion_matrix"], strict=True) if sum(column)) >= 2


def test_json_fields_and_confusion_png(capsys, tmp_path, arrow_dir, models):
    png = tmp_path / "out" / "cm.png"
    summary = run_json(capsys, models[0], arrow_dir, "--confusion-png", png, "--batch-size", "7")
    assert summary["split"] == "validation"  # the default for a dataset directory
    assert summary["n"] == 30
    assert set(summary["per_class"]) == set(CLASS_NAMES)
    assert sum(c["support"] for c in summary["per_class"].values()) == 30
    correct = sum(summary["confusion_matrix"][i][i] for i in range(len(CLASS_NAMES)))
    assert summary["accuracy"] == pytest.approx(correct / 30)
    f1s = [c["f1"] for c in summary["per_class"].values()]
    assert summary["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))
    assert summary["models"] == [str(models[0])]
    assert summary["confusion_png"] == str(png)
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in png.parent.iterdir()] == ["cm.png"]  # no temp file left behind


def test_text_output(capsys, tmp_path, arrow_dir, models):
    code = main([str(models[0]), str(arrow_dir), "--no-progress", "--confusion-png", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert code == 0
    assert "accuracy" in out and "macro-F1" in out and "n=30" in out
    for name in CLASS_NAMES:
        assert f"\n{name} " in out


def test_ensemble_averages_probabilities(capsys, tmp_path, arrow_dir, models):
    rows = load_splits(arrow_dir)["test"]
    faces = torch.from_numpy(rows.with_format("numpy")[:]["image"].astype(np.uint8))
    labels = torch.tensor(rows["label"])
    manual = []
    for directory in models:
        model, description = load_export(directory)
        with torch.no_grad():
            manual.append(model(description.preprocessing(faces)).softmax(-1))
    expected = (manual[0] + manual[1]) / 2
    assert (manual[0] - manual[1]).abs().max() > 0.05  # two genuinely different members

    outcome = evaluate(
        Ensemble.load([str(m) for m in models], torch.device("cpu")), rows, batch_size=8, progress=False
    )
    # Batches of 8 vs 30 take different kernels: float32 rounding differs by ~1e-5.
    torch.testing.assert_close(outcome.probabilities, expected, rtol=1e-3, atol=1e-4)

    summary = run_json(capsys, *models, arrow_dir, "--split", "test", "--confusion-png", tmp_path / "e.png")
    assert summary["models"] == [str(m) for m in models]
    assert summary["accuracy"] == pytest.approx(float((expected.argmax(-1) == labels).float().mean()))


def test_flip_tta_averages_the_face_and_its_mirror(arrow_dir, models):
    rows = load_splits(arrow_dir)["validation"].select(range(6))
    faces = torch.from_numpy(rows.with_format("numpy")[:]["image"].astype(np.uint8))
    ensemble = Ensemble.load([str(models[0])], torch.device("cpu"))
    expected = (ensemble.predict_proba(faces) + ensemble.predict_proba(faces.flip(-1))) / 2
    torch.testing.assert_close(evaluate(ensemble, rows, "flip", progress=False).probabilities, expected)


def test_default_model(capsys, monkeypatch, tmp_path, arrow_dir, models):
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(models[1]))
    summary = run_json(capsys, arrow_dir, "--confusion-png", tmp_path / "d.png")
    assert summary["models"] == [str(models[1])]

    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tmp_path / "missing"))
    err = run_error(capsys, arrow_dir)
    assert "no model given and the default model" in err and str(tmp_path / "missing") in err


def test_bad_inputs_are_one_sentence(capsys, tmp_path, synth_csv, arrow_dir, models):
    run_dir = models[0].parent
    assert f"pass {run_dir / 'best'} instead" in run_error(capsys, run_dir, arrow_dir)
    assert "no such model directory" in run_error(capsys, tmp_path / "nope", arrow_dir)
    assert "no such dataset directory or CSV file" in run_error(capsys, models[0], tmp_path / "nope.csv")
    assert "is a model export, not data" in run_error(capsys, models[0])
    assert "not a prepared dataset" in run_error(capsys, models[0], tmp_path)

    train_only = tmp_path / "train_only.csv"
    lines = synth_csv.read_text().splitlines(keepends=True)
    train_only.write_text(lines[0] + "".join(line for line in lines[1:50]))
    err = run_error(capsys, models[0], train_only, "--split", "test")
    assert "has no 'test' split (PrivateTest rows)" in err

    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0] + lines[1] + "9,1 2 3,Training\n")
    err = run_error(capsys, models[0], bad)
    assert f"{bad}:3" in err and "invalid row" in err
    assert len(err.splitlines()) == 2  # the sentence and the listed row


def test_console_script_prints_only_json(tmp_path, synth_csv, models):
    script = Path(sys.executable).with_name("emotionnet-eval")
    if not script.exists():
        pytest.skip("the package is not installed (pip install -e .)")
    done = subprocess.run(
        [str(script), str(models[0]), str(synth_csv), "--json", "--confusion-png", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # see one_torch_thread
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n"] == 300
    assert "eval" in done.stderr  # the progress bar goes to stderr, not into the JSON


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A local sqlite tracking store (MLFLOW_TRACKING_URI) with one experiment; yields (client, id)."""
    mlflow = pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        client = mlflow.MlflowClient()
        yield client, client.create_experiment("eval-test", artifact_location=(root / "artifacts").as_uri())


def test_mlflow_model_uri_gives_the_exported_model(mlflow_store, arrow_dir, models):
    """The model training logs (its safetensors export as a pyfunc), loaded by run and by alias."""
    import mlflow

    client, experiment = mlflow_store
    run_id = client.create_run(experiment).info.run_id
    tracking = TrackingConfig(registered_model_name="eval-test-model", registered_model_alias="champion")
    with mlflow.start_run(run_id=run_id):
        log_best_model(models[0], tracking, step=1)
    rows = load_splits(arrow_dir)["test"]
    cpu = torch.device("cpu")
    from_export = evaluate(Ensemble.load([str(models[0])], cpu), rows, progress=False)
    for uri in (f"runs:/{run_id}/model", "models:/eval-test-model@champion"):
        from_uri = evaluate(Ensemble.load([uri], cpu), rows, progress=False)
        torch.testing.assert_close(from_uri.probabilities, from_export.probabilities, rtol=0, atol=0)


def test_eval_logs_into_an_existing_mlflow_run(capsys, tmp_path, mlflow_store, arrow_dir, models):
    client, experiment = mlflow_store
    run_id = client.create_run(experiment).info.run_id
    png = tmp_path / "cm.png"
    summary = run_json(
        capsys, models[0], arrow_dir, "--split", "test", "--confusion-png", png, "--mlflow-run-id", run_id
    )
    assert summary["mlflow_run_id"] == run_id

    run = client.get_run(run_id)
    prefix = metric_prefix("test", "none")
    assert prefix == "eval_test"
    assert run.data.metrics[f"{prefix}/accuracy"] == pytest.approx(summary["accuracy"])
    assert run.data.metrics[f"{prefix}/macro_f1"] == pytest.approx(summary["macro_f1"])
    assert run.data.metrics[f"{prefix}/n"] == 30
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert logged == {
        "evaluation/cm.png", f"evaluation/{prefix}.json",
        f"evaluation/{prefix}_per_class.json", f"evaluation/{prefix}_per_class.png",
    }  # fmt: skip
    report = json.loads(
        Path(client.download_artifacts(run_id, f"evaluation/{prefix}.json", str(tmp_path))).read_text()
    )
    assert report["accuracy"] == summary["accuracy"]

    # per class: one table and one bar chart, not a single-point metric per class
    assert sorted(run.data.metrics) == [f"{prefix}/{k}" for k in ("accuracy", "loss", "macro_f1", "n")]
    table = json.loads(
        Path(
            client.download_artifacts(run_id, f"evaluation/{prefix}_per_class.json", str(tmp_path))
        ).read_text()
    )  # MLflow's table format: {"columns": [...], "data": [[...], ...]}
    rows = [dict(zip(table["columns"], values, strict=True)) for values in table["data"]]
    assert [row["class"] for row in rows] == list(CLASS_NAMES)
    assert "mlflow.loggedArtifacts" in run.data.tags  # what lists the table in MLflow's UI
    for row in rows:
        expected = summary["per_class"][row["class"]]
        assert row["recall"] == pytest.approx(expected["recall"]) and row["support"] == expected["support"]
    figure = client.download_artifacts(run_id, f"evaluation/{prefix}_per_class.png", str(tmp_path))
    assert cv2.imread(figure).shape[1] > 600

    err = run_error(capsys, models[0], arrow_dir, "--mlflow-run-id", "0" * 32)
    assert f"MLflow run {'0' * 32} cannot be used" in err
