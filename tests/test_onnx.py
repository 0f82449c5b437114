"""`emotionnet-export --format onnx` and `--runtime onnx`: the ONNX file agrees with the PyTorch export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from emotionnet import EmotionNet
from emotionnet.assets import BUNDLED_MODEL
from emotionnet.cli.eval import main as eval_main
from emotionnet.cli.export import main as export_main
from emotionnet.cli.predict import main as predict_main
from emotionnet.config.schema import TrackingConfig
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.exit_codes import ExitCode
from emotionnet.inference.ensemble import Ensemble, load_model
from emotionnet.inference.export import load_export, save_export
from emotionnet.inference.onnx_export import ONNX_NAME, OnnxModel, synthetic_faces
from emotionnet.tracking.mlflow_tracker import log_best_model
from tests.training_utils import TINY_MODEL

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory) -> Path:
    """A copy of the bundled model (its real architecture) with its ONNX export."""
    model = tmp_path_factory.mktemp("onnx") / "bundled"
    shutil.copytree(BUNDLED_MODEL, model)
    assert export_main([str(model), "--format", "onnx"]) == ExitCode.OK
    return model


@pytest.fixture
def tiny(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_export(tmp_path / "tiny", EmotionNet(TINY_MODEL).state_dict(), TINY_MODEL, Preprocessing())


def test_onnx_logits_match_pytorch_on_256_faces(bundled_onnx) -> None:
    model, description = load_export(bundled_onnx)
    pixels = description.preprocessing(synthetic_faces(256, seed=1))
    with torch.inference_mode():
        expected = model(pixels)
    got = OnnxModel.create(str(bundled_onnx / ONNX_NAME))(pixels)
    assert got.shape == (256, 7)
    assert float((got - expected).abs().max()) <= 1e-4


def test_the_onnx_file_has_opset_17_a_dynamic_batch_and_its_preprocessing_in_metadata(bundled_onnx) -> None:
    proto = onnx.load(str(bundled_onnx / ONNX_NAME))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    metadata = {p.key: p.value for p in proto.metadata_props}
    _, description = load_export(bundled_onnx)
    assert json.loads(metadata["class_names"]) == description.class_names
    preprocessing = json.loads(metadata["preprocessing"])
    assert (preprocessing["input_size"], preprocessing["mean"], preprocessing["std"]) == (48, 0.5, 0.25)
    runtime = OnnxModel.create(str(bundled_onnx / ONNX_NAME))
    for batch in (1, 5):  # batches other than the traced one (2)
        pixels = description.preprocessing(synthetic_faces(batch))
        assert runtime(pixels).shape == (batch, 7)


def test_eval_with_the_onnx_runtime_gives_the_figures_of_torch(tiny, synth_csv, tmp_path, capsys) -> None:
    assert export_main([str(tiny), "--format", "onnx"]) == ExitCode.OK
    capsys.readouterr()
    summaries = {}
    for runtime in ("torch", "onnx"):
        args = [str(tiny), str(synth_csv), "--json", "--no-progress", "--runtime", runtime,
                "--confusion-png", str(tmp_path / f"{runtime}.png")]  # fmt: skip
        assert eval_main(args) == ExitCode.OK
        summaries[runtime] = json.loads(capsys.readouterr().out)
    assert summaries["onnx"]["runtime"] == "onnx"
    assert summaries["onnx"]["n"] == summaries["torch"]["n"] > 0
    assert summaries["onnx"]["accuracy"] == summaries["torch"]["accuracy"]
    assert np.isclose(summaries["onnx"]["loss"], summaries["torch"]["loss"], atol=1e-5)


def test_the_onnx_runtime_without_an_onnx_file_says_how_to_export_it(tiny, synth_csv, capsys) -> None:
    assert eval_main([str(tiny), str(synth_csv), "--runtime", "onnx", "--no-progress"]) == ExitCode.BAD_INPUT
    error = capsys.readouterr().err
    assert f"has no {ONNX_NAME}: run emotionnet-export {tiny} --format onnx" in error
    assert error.count("\n") == 1


def test_an_onnx_file_of_other_weights_is_refused(tiny, synth_csv, capsys) -> None:
    assert export_main([str(tiny), "--format", "onnx"]) == ExitCode.OK
    stale = (tiny / ONNX_NAME).read_bytes()
    torch.manual_seed(1)  # retrained: new weights, the old model.onnx put back beside them
    save_export(tiny, EmotionNet(TINY_MODEL).state_dict(), TINY_MODEL, Preprocessing())
    (tiny / ONNX_NAME).write_bytes(stale)
    capsys.readouterr()
    assert eval_main([str(tiny), str(synth_csv), "--runtime", "onnx", "--no-progress"]) == ExitCode.BAD_INPUT
    assert "was exported from other weights" in capsys.readouterr().err


def test_export_of_a_folder_that_is_not_a_model_is_one_line_exit_2(tmp_path, capsys) -> None:
    assert export_main([str(tmp_path), "--format", "onnx"]) == ExitCode.BAD_INPUT
    assert "is not an EmotionNet model export" in capsys.readouterr().err
    assert not (tmp_path / ONNX_NAME).exists()


def test_predict_with_the_onnx_runtime_gives_the_probabilities_of_torch(tiny, tmp_path, capsys) -> None:
    assert export_main([str(tiny), "--format", "onnx"]) == ExitCode.OK
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), synthetic_faces(1)[0].numpy())
    capsys.readouterr()
    probabilities = {}
    for runtime in ("torch", "onnx"):
        args = ["--model", str(tiny), str(face), "--json", "--no-progress", "--runtime", runtime]
        assert predict_main(args) == ExitCode.OK
        (image,) = json.loads(capsys.readouterr().out)["images"]
        probabilities[runtime] = list(image["faces"][0]["probabilities"].values())
    assert np.allclose(probabilities["onnx"], probabilities["torch"], atol=1e-5)


def test_the_mlflow_model_carries_the_onnx_file(tiny, tmp_path, monkeypatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("onnx", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log_best_model(tiny, TrackingConfig(), step=1)
    assert not (tiny / ONNX_NAME).exists()  # the export is logged with it, not changed
    onnx_member = load_model(f"runs:/{run.info.run_id}/model", torch.device("cpu"), runtime="onnx")
    faces = synthetic_faces(8)
    expected = Ensemble.load([str(tiny)], torch.device("cpu")).predict_proba(faces)
    assert torch.allclose(Ensemble([onnx_member]).predict_proba(faces), expected, atol=1e-5)
