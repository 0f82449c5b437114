"""The peer benchmark's own pieces (label order, fer's preprocessing, scoring), without the peer's runtime."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_fer_peer import (
    FER2013_CLASSES,
    peer_to_fer2013,
    preprocess,
    resize_linear,
    scores,
)


@pytest.fixture
def faces() -> np.ndarray:
    """Random 48x48 faces plus the two extremes, all black and all white."""
    rng = np.random.default_rng(0)
    random = rng.integers(0, 256, size=(30, 48, 48), dtype=np.uint8)
    return np.concatenate([random, np.zeros((1, 48, 48), np.uint8), np.full((1, 48, 48), 255, np.uint8)])


def test_peer_order_is_fer2013_order_as_fer_ships_it():
    assert peer_to_fer2013().tolist() == list(range(7))


def test_permuted_peer_labels_are_put_back_in_fer2013_order():
    peer = ("happy", "angry", "neutral", "sad", "fear", "surprise", "disgust")
    probs = np.eye(7)  # row i: the peer calls class peer[i]
    reordered = probs[:, peer_to_fer2013(peer)]
    assert [FER2013_CLASSES[j] for j in reordered.argmax(1)] == list(peer)


def test_peer_labels_that_are_not_fer2013_classes_are_refused():
    with pytest.raises(ValueError, match="permutation"):
        peer_to_fer2013(("angry", "disgust", "fear", "happy", "sad", "surprise", "contempt"))


def test_resize_matches_cv2_inter_linear_bit_for_bit(faces):
    cv2 = pytest.importorskip("cv2")
    expected = np.stack([cv2.resize(face, (64, 64)) for face in faces])
    assert np.array_equal(resize_linear(faces), expected)


def test_resize_keeps_flat_faces_flat(faces):
    resized = resize_linear(faces[-2:])
    assert resized.shape == (2, 64, 64) and resized[0].max() == 0 and resized[1].min() == 255


def test_preprocess_gives_the_peer_input_in_minus_one_to_one(faces):
    x = preprocess(faces)
    assert x.shape == (len(faces), 64, 64, 1) and x.dtype == np.float32
    assert x[-2].max() == -1.0 and x[-1].min() == 1.0


def test_scores_accuracy_macro_f1_and_recall():
    labels = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6, 6])
    predicted = np.array([0, 1, 1, 1, 2, 3, 4, 5, 6, 0])
    result = scores(labels, predicted)
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["recall"]["angry"] == pytest.approx(0.5) and result["recall"]["disgust"] == 1.0
    f1_angry, f1_disgust, f1_neutral = 0.5, 0.8, 2 / 3
    assert result["macro_f1"] == pytest.approx((f1_angry + f1_disgust + f1_neutral + 4) / 7)
