"""The synthetic FER2013-format generator: format, determinism, splits, and a learnable-but-not-trivial task."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from data_prep.schema import CLASS_NAMES, NUM_CLASSES
from data_prep.synth import render_faces, usage_counts, write_synthetic_csv
from emotionnet.cli.synth import main


def test_csv_is_in_the_fer2013_format(synth_csv):
    frame = pd.read_csv(synth_csv, dtype={"pixels": str})
    assert list(frame.columns) == ["emotion", "pixels", "Usage"]
    assert frame.emotion.between(0, NUM_CLASSES - 1).all()
    assert frame.Usage.tolist() == ["Training"] * 240 + ["PublicTest"] * 30 + ["PrivateTest"] * 30
    tokens = frame.pixels.str.split(" ")
    assert (tokens.str.len() == 48 * 48).all()
    values = np.array(tokens.tolist(), dtype=np.int64)
    assert values.min() >= 0 and values.max() <= 255
    assert (np.array(tokens.tolist()) == values.astype(str)).all()  # plain decimal, as in the real file
    assert len(set(frame.emotion)) == NUM_CLASSES


def test_deterministic_by_seed_any_size(tmp_path):
    a = write_synthetic_csv(tmp_path / "a.csv", rows=1100, seed=7)  # crosses a 1024-row chunk
    b = write_synthetic_csv(tmp_path / "b.csv", rows=1100, seed=7)
    c = write_synthetic_csv(tmp_path / "c.csv", rows=1100, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    gz = write_synthetic_csv(tmp_path / "a.csv.gz", rows=1100, seed=7)
    assert gzip.decompress(gz.read_bytes()) == a.read_bytes()
    assert gz.read_bytes() == write_synthetic_csv(tmp_path / "again.csv.gz", rows=1100, seed=7).read_bytes()


@pytest.mark.parametrize(
    "rows, expected",
    [(1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1)), (10, (8, 1, 1)), (1000, (800, 100, 100))],
)
def test_usage_split_is_80_10_10_with_every_split_from_3_rows(rows, expected, tmp_path):
    assert usage_counts(rows) == expected
    frame = pd.read_csv(write_synthetic_csv(tmp_path / "s.csv", rows=rows, seed=0))
    assert len(frame) == rows
    assert [int((frame.Usage == u).sum()) for u in ("Training", "PublicTest", "PrivateTest")] == list(
        expected
    )


def test_cli_writes_the_csv(tmp_path, capsys):
    out = tmp_path / "demo" / "fer.csv"
    assert main([str(out), "--rows", "50", "--seed", "3"]) == 0
    assert "wrote 50 synthetic faces" in capsys.readouterr().out
    assert out.read_bytes() == write_synthetic_csv(tmp_path / "ref.csv", rows=50, seed=3).read_bytes()
    assert list(tmp_path.joinpath("demo").iterdir()) == [out]  # no temp file left


def test_classes_are_learnable_but_not_trivially():
    """A linear classifier (ridge regression on 24x24 downsampled pixels) beats chance (1/7) clearly, yet is
    far from perfect: pose, lighting and noise hide the class (the demo's EmotionNet gets ~0.95)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, 2000)
    faces = render_faces(labels, rng).astype(np.float32) / 255
    features = faces.reshape(len(faces), 24, 2, 24, 2).mean(axis=(2, 4)).reshape(len(faces), -1) - 0.5
    features = np.hstack([features, np.ones((len(faces), 1), dtype=np.float32)])  # bias
    train, held_out = slice(0, 1600), slice(1600, None)
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels[train]]
    gram = features[train].T @ features[train] + 10.0 * np.eye(features.shape[1], dtype=np.float32)
    weights = np.linalg.solve(gram, features[train].T @ one_hot)
    accuracy = ((features[held_out] @ weights).argmax(1) == labels[held_out]).mean()
    assert 0.4 < accuracy < 0.7, accuracy  # 0.55 with this seed


@pytest.fixture(scope="module")
def faces_by_class() -> tuple[np.ndarray, np.ndarray]:
    """100 faces of each class (labels, float faces), seed 1."""
    labels = np.repeat(np.arange(NUM_CLASSES), 100)
    return labels, render_faces(labels, np.random.default_rng(1)).astype(np.float32)


def test_render_is_deterministic_for_a_seed():
    labels = np.arange(NUM_CLASSES)
    first = render_faces(labels, np.random.default_rng(5))
    assert np.array_equal(first, render_faces(labels, np.random.default_rng(5)))
    assert not np.array_equal(first, render_faces(labels, np.random.default_rng(6)))


def test_happy_and_sad_differ_by_where_the_middle_of_the_mouth_is(faces_by_class):
    """The documented mouth signal, read without learning anything: a smile's middle dips below its corners,
    a sad mouth's middle bulges above them, so the darkest row of the face's middle columns (the mouth line;
    the nose is drawn fainter) lies below the mouth's mean height (row 34) in happy faces, above in sad ones."""
    labels, faces = faces_by_class
    happy_or_sad = np.isin(labels, (CLASS_NAMES.index("happy"), CLASS_NAMES.index("sad")))
    top = 27  # below the nose's tip, above the chin
    # The four middle columns, averaged against the pixel noise.
    middle = faces[happy_or_sad, top:43, 22:26].mean(axis=2)
    lowered = top + middle.argmin(axis=1) > 34
    accuracy = (lowered == (labels[happy_or_sad] == CLASS_NAMES.index("happy"))).mean()
    assert accuracy > 0.75, accuracy  # chance: 0.5; pose and face shape keep it from 1


def test_every_face_differs_even_within_a_class(faces_by_class):
    labels, faces = faces_by_class
    assert len({face.tobytes() for face in faces}) == len(faces)
    neutral = faces[labels == CLASS_NAMES.index("neutral")]
    assert neutral.std(axis=0).mean() > 20  # pose, tones, lighting and noise: not one template plus noise


def test_no_trivial_leak_through_brightness_or_row_order(faces_by_class, synth_csv):
    labels, faces = faces_by_class
    brightness = faces.mean(axis=(1, 2))
    class_means = np.array([brightness[labels == c].mean() for c in range(NUM_CLASSES)])
    within_class_std = np.sqrt(np.mean([brightness[labels == c].var() for c in range(NUM_CLASSES)]))
    assert np.abs(class_means - brightness.mean()).max() < 0.35 * within_class_std
    # Labels are drawn per row: neighbours share a class about 1 time in 7, not in runs.
    emotion = pd.read_csv(synth_csv, usecols=["emotion"]).emotion.to_numpy()
    assert (emotion[1:] == emotion[:-1]).mean() < 0.25
