"""`emotionnet-predict`: a face found in a real photo, 48x48 crops without detection, no-face images,
annotated output, bad paths, and results streamed while inputs remain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_prep.schema import CLASS_NAMES
from data_prep.synth import render_faces
from emotionnet.assets import BUNDLED_MODEL
from emotionnet.cli.predict import main
from emotionnet.inference.ensemble import DEFAULT_MODEL_ENV, FORWARD_BATCH, Ensemble
from emotionnet.inference.predict import predict_stream
from tests.conftest import REPO_ROOT
from tests.test_evaluate import make_export, one_torch_thread  # noqa: F401 (an autouse fixture)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("predict") / "best", 0)


@pytest.fixture
def crop(tmp_path) -> Path:
    """A synthetic 48x48 FER-style face (class happy)."""
    path = tmp_path / "crop.png"
    assert cv2.imwrite(str(path), render_faces(np.array([3]), np.random.default_rng(0))[0])
    return path


@pytest.fixture
def no_face(tmp_path) -> Path:
    path = tmp_path / "gradient.png"
    assert cv2.imwrite(str(path), np.tile(np.linspace(0, 255, 320).astype(np.uint8), (240, 1)))
    return path


def predict_json(capsys, *args) -> dict:
    code = main([*map(str, args), "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_finds_the_face_in_a_photo(capsys, model, photo):
    (image,) = predict_json(capsys, "--model", model, photo)["images"]
    assert image["path"] == str(photo) and image["error"] is None
    (face,) = image["faces"]
    assert face["detected"] is True
    x, y, w, h = face["box"]
    # The face is in the upper middle of the portrait, about 230 px wide.
    assert abs(x + w / 2 - 265) < 50 and abs(y + h / 2 - 215) < 50 and 150 < w < 320
    probs = face["probabilities"]
    assert list(probs) == list(CLASS_NAMES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert face["label"] == max(probs, key=probs.get)


def test_48px_crop_is_classified_whole(capsys, model, crop):
    (image,) = predict_json(capsys, "--model", model, crop)["images"]
    (face,) = image["faces"]
    assert face["detected"] is False and face["box"] == [0, 0, 48, 48]
    # Exactly the model's output for the crop itself: no detection, no resizing.
    pixels = torch.from_numpy(cv2.imread(str(crop), cv2.IMREAD_GRAYSCALE))[None]
    expected = Ensemble.load([str(model)], torch.device("cpu")).predict_proba(pixels)[0]
    assert list(face["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-6)


def test_no_face_is_reported(capsys, model, no_face):
    assert predict_json(capsys, "--model", model, no_face)["images"][0]["faces"] == []
    assert main(["--model", str(model), str(no_face), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"{no_face}: no face found"


def test_no_detect_takes_the_whole_image(capsys, model, no_face):
    (face,) = predict_json(capsys, "--model", model, no_face, "--no-detect")["images"][0]["faces"]
    assert face["detected"] is False and face["box"] == [0, 0, 320, 240]


def test_folder_annotations_and_unreadable_files(capsys, tmp_path, model, photo, crop, no_face):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "portrait.jpg").write_bytes(photo.read_bytes())
    crop.rename(folder / "crop.png")
    no_face.rename(folder / "gradient.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either, and not an image name")
    out = tmp_path / "annotated"

    code = main(["--model", str(model), str(folder), "--annotate", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 2  # one file could not be read; the others were still classified
    assert f"{folder / 'broken.jpg'}: error: not an image file that can be read" in text
    assert f"{folder / 'gradient.png'}: no face found" in text
    assert f"{folder / 'sub' / 'portrait.jpg'}: face 1 (x=" in text
    assert f"{folder / 'crop.png'}: face 1 (whole image)" in text
    assert "notes.txt" not in text

    written = sorted(p.name for p in out.iterdir())
    assert written == ["crop_annotated.png", "gradient_annotated.png", "portrait_annotated.png"]
    portrait = cv2.imread(str(out / "portrait_annotated.png"))
    assert portrait.shape == cv2.imread(str(photo)).shape
    assert not np.array_equal(portrait, cv2.imread(str(photo)))  # the box was drawn
    assert cv2.imread(str(out / "crop_annotated.png")).shape[:2] == (256, 256)  # enlarged to be legible


def test_bad_paths_are_one_sentence(capsys, tmp_path, model):
    assert main(["--model", str(model), str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"emotionnet-predict: error: {tmp_path / 'missing.jpg'}: no such file or folder"
    (tmp_path / "empty").mkdir()
    assert main(["--model", str(model), str(tmp_path / "empty")]) == 2
    assert "the folder holds no images" in capsys.readouterr().err


def test_the_bundled_model_is_the_default(capsys, monkeypatch, photo):
    """A new user classifies a photo right after install: no --model, no environment variable."""
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    assert (BUNDLED_MODEL / "model.safetensors").is_file()
    output = predict_json(capsys, photo)
    assert output["models"] == [str(BUNDLED_MODEL)]
    (image,) = output["images"]
    (face,) = image["faces"]
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_a_file_name_with_a_newline_is_quoted_in_the_text_output(capsys, tmp_path, model, crop):
    forged = tmp_path / "a.png\nfake.png: face 1 (whole image): happy"
    crop.rename(forged)
    assert main(["--model", str(model), str(forged), "--no-detect", "--no-progress"]) == 0
    (line,) = capsys.readouterr().out.splitlines()  # one image, one face: one line, nothing forged
    assert line.startswith(repr(str(forged)) + ": face 1 (whole image): ")


# ---- streaming: results come out while inputs remain ------------------------------------------------


@pytest.fixture
def crops_folder(tmp_path) -> Path:
    """More 48x48 synthetic faces than one classification batch holds, named in input order."""
    folder = tmp_path / "crops"
    folder.mkdir()
    labels = np.arange(FORWARD_BATCH + 20) % len(CLASS_NAMES)
    for i, face in enumerate(render_faces(labels, np.random.default_rng(1))):
        assert cv2.imwrite(str(folder / f"{i:04d}.png"), face)
    return folder


def test_results_stream_before_the_last_image_is_read(model, crops_folder):
    files = sorted(crops_folder.iterdir())
    ensemble = Ensemble.load([str(model)], torch.device("cpu"))
    stream = predict_stream([str(crops_folder)], ensemble, progress=False)
    first = next(stream)
    files[-1].unlink()  # not read yet: it is reported as unreadable rather than classified
    results = [first, *stream]
    assert [r.path for r in results] == [str(f) for f in files]
    assert results[-1].error is not None and all(r.error is None for r in results[:-1])
    # the same probabilities as classifying every face in one go
    faces = torch.from_numpy(np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files[:-1]]))
    expected = ensemble.predict_proba(faces).tolist()
    streamed = [list(r.faces[0].probabilities.values()) for r in results[:-1]]
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-6)


def test_cli_prints_json_lines_while_inputs_remain_with_a_progress_bar(capsys, tmp_path, model, crops_folder):
    files = sorted(crops_folder.iterdir())
    command = [
        sys.executable,
        "-m",
        "emotionnet.cli.predict",
        "--model",
        str(model),
        str(crops_folder),
        "--jsonl",
    ]
    with (
        open(tmp_path / "stderr.txt", "w") as stderr,  # a file: a full stderr pipe would block the command
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO_ROOT) as process,
    ):
        first = process.stdout.readline()
        files[-1].unlink()
        rest = process.stdout.read()
        process.wait(timeout=120)
    err = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 2, err  # the file removed mid-run is a per-file error
    lines = [json.loads(line) for line in [first, *rest.splitlines()]]
    assert [line["path"] for line in lines] == [str(f) for f in files]
    assert lines[-1]["error"] == "not an image file that can be read"
    assert "predict: 100%" in err  # the progress bar, on stderr
    # line for line what --json gives for the files that remain
    assert lines[:-1] == predict_json(capsys, "--model", model, crops_folder)["images"]
