"""`emotionnet-predict`: a face found in a real photo, 48x48 crops without detection, no-face images,
annotated output, bad paths, results streamed while inputs remain, and videos."""

from __future__ import annotations

import csv
import json
import re
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
from emotionnet.inference.predict import FaceDetector, predict_stream
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


# ---- videos --------------------------------------------------------------------------------------


CLIP_FPS, CLIP_FRAMES, FACE_FRAMES = 10, 30, 20  # 3 s: a face in the first 2 s, then an empty background


@pytest.fixture
def clip(tmp_path) -> Path:
    """A 3 s MJPG clip of synthetic faces (each held 5 frames) enlarged on a gray background, then none."""
    detector = FaceDetector()

    def frame(face: np.ndarray | None) -> np.ndarray:
        canvas = np.full((240, 320), 128, np.uint8)
        if face is not None:
            canvas[24:216, 64:256] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)
        return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)

    # Not every drawn face looks like one to the Haar cascade: keep four that do.
    faces = render_faces(np.arange(21) % len(CLASS_NAMES), np.random.default_rng(0))
    found = [f for f in faces if len(detector.detect(cv2.cvtColor(frame(f), cv2.COLOR_BGR2GRAY))) == 1]
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, (320, 240))
    for i in range(CLIP_FRAMES):
        writer.write(frame(found[i // 5] if i < FACE_FRAMES else None))
    writer.release()
    return path


def green_pixels(bgr: np.ndarray) -> int:
    """Pixels of the annotation's pure green boxes and labels (the clip itself is gray)."""
    return int(((bgr[..., 1] > 200) & (bgr[..., 0] < 60) & (bgr[..., 2] < 60)).sum())


def test_video_gives_a_row_per_sampled_frame_a_plot_and_an_annotated_copy(capsys, tmp_path, model, clip):
    out, annotated = tmp_path / "out", tmp_path / "annotated"
    argv = ["--model", str(model), str(clip), "--jsonl", "--no-progress", "--fps", "2", "--out", str(out)]
    assert main([*argv, "--annotate", str(annotated)]) == 0
    *frames, summary = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # 2 of the clip's 10 frames a second; faces in the first 2 s only
    sampled = [(f["frame"], f["time_s"], len(f["faces"])) for f in frames]
    assert sampled == [(0, 0.0, 1), (5, 0.5, 1), (10, 1.0, 1), (15, 1.5, 1), (20, 2.0, 0), (25, 2.5, 0)]
    table, plot, video = out / "clip_frames.csv", out / "clip_emotions.png", annotated / "clip_annotated.mp4"
    assert summary == {
        "path": str(clip), "sampled_frames": 6, "frames_with_faces": 4,
        "files": [str(table), str(plot), str(video)], "error": None,
    }  # fmt: skip

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["frame"]), float(r["time_s"]), r["face"]) for r in rows] == [
        (0, 0.0, "1"), (5, 0.5, "1"), (10, 1.0, "1"), (15, 1.5, "1"), (20, 2.0, ""), (25, 2.5, ""),
    ]  # fmt: skip
    for row, result in zip(rows, frames[:4], strict=False):
        (face,) = result["faces"]
        assert row["label"] == face["label"] and [int(row[k]) for k in "xywh"] == face["box"]
        assert [float(row[name]) for name in CLASS_NAMES] == pytest.approx(
            list(face["probabilities"].values()), abs=1e-6
        )
    assert cv2.imread(str(plot)).shape[1] > 600  # the emotions-over-time figure

    capture = cv2.VideoCapture(str(video))
    written = []
    while (frame := capture.read())[0]:
        written.append(frame[1])
    assert len(written) == CLIP_FRAMES and written[0].shape == (240, 320, 3)
    # boxes from each sampled frame on until the next: on every frame with a face, on none after
    assert all(green_pixels(f) > 100 for f in written[:FACE_FRAMES])
    assert all(green_pixels(f) == 0 for f in written[FACE_FRAMES:])


def test_a_truncated_or_broken_video_is_a_per_file_error_while_a_photo_is_still_classified(
    capsys, tmp_path, model, clip, photo
):
    truncated, broken = tmp_path / "truncated.avi", tmp_path / "broken.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    broken.write_bytes(b"not a video " * 100)
    argv = [str(truncated), str(broken), str(photo), "--no-progress", "--out", str(tmp_path / "out")]
    assert main(["--model", str(model), *argv]) == 2
    lines = capsys.readouterr().out.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 2
    assert re.fullmatch(
        rf"{re.escape(str(truncated))}: error: the video ends after \d+ of the 30 frames its header gives "
        r"\(truncated or corrupted\)",
        errors[0],
    )
    assert (
        errors[1]
        == f"{broken}: error: not a video file that can be read (unknown format, truncated or corrupted)"
    )
    assert any(
        line.startswith(f"{truncated} frame 0 (0.00 s): face 1 (x=") for line in lines
    )  # before the cut
    assert any(line.startswith(f"{photo}: face 1 (x=") for line in lines)  # the inputs after still classified
