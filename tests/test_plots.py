"""emotionnet.evaluation.plots: what each figure shows, and atomic PNG writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.schema import CLASS_NAMES
from emotionnet.evaluation.metrics import ClassificationReport
from emotionnet.evaluation.plots import (
    confusion_matrix_figure,
    emotions_over_time,
    misclassified_grid,
    per_class_figure,
    save_figure,
    training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_is_row_normalized_with_class_names():
    confusion = torch.zeros(7, 7, dtype=torch.int64)
    confusion[0, 0], confusion[0, 3] = 3, 1  # angry: 3 right, 1 taken for happy
    confusion[3, 3] = 5
    fig = confusion_matrix_figure(confusion, CLASS_NAMES, title="val")
    ax = fig.axes[0]
    assert ax.get_title() == "val"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASS_NAMES)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(CLASS_NAMES)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(cells) == 49
    assert (cells[0, 0], cells[0, 3], cells[3, 3], cells[1, 1]) == ("0.75", "0.25", "1.00", "0.00")
    np.testing.assert_allclose(ax.images[0].get_array()[0, :4], [0.75, 0, 0, 0.25])

    counts = confusion_matrix_figure(confusion, CLASS_NAMES, normalize=False).axes[0]
    assert {t.get_text() for t in counts.texts} == {"0", "1", "3", "5"}


def test_confusion_matrix_shape_must_match_class_names():
    with pytest.raises(ValueError, match="expected 7 x 7"):
        confusion_matrix_figure(torch.zeros(3, 3), CLASS_NAMES)


def test_per_class_figure_shows_precision_recall_and_f1_of_each_class_with_its_support():
    confusion = torch.zeros(7, 7, dtype=torch.int64)
    confusion[0, 0], confusion[0, 3], confusion[3, 3] = 3, 1, 5  # angry: recall 0.75; happy: precision 5/6
    fig = per_class_figure(ClassificationReport(confusion).per_class(CLASS_NAMES), "test")
    ax = fig.axes[0]
    assert ax.get_title() == "test"
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "angry\nn=4" and ticks[3] == "happy\nn=5" and len(ticks) == 7
    heights = {c.get_label(): [bar.get_height() for bar in c] for c in ax.containers}
    assert list(heights) == ["precision", "recall", "f1"]
    assert heights["recall"][0] == pytest.approx(0.75) and heights["precision"][3] == pytest.approx(5 / 6)


def test_emotions_over_time_draws_each_class_against_seconds_with_gaps_for_no_face():
    probabilities = np.full((3, 7), 1 / 7)
    probabilities[1] = np.nan  # no face in the middle frame
    fig = emotions_over_time([0.0, 0.5, 1.0], probabilities, CLASS_NAMES, "clip")
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == list(CLASS_NAMES)
    np.testing.assert_array_equal(lines[0].get_xdata(), [0.0, 0.5, 1.0])
    assert np.isnan(lines[0].get_ydata()[1])
    empty = emotions_over_time([0.0], np.full((1, 7), np.nan), CLASS_NAMES)
    assert "no face found" in [t.get_text() for t in empty.axes[0].texts]


def test_misclassified_grid_shows_only_wrong_predictions():
    images = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 48, 48), np.uint8)
    true = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    pred = [0, 2, 2, 3, 0, 5, 6, 6, 1, 3]  # wrong at 1, 4, 7, 9
    fig = misclassified_grid(images, true, pred, CLASS_NAMES, max_items=3)
    shown = [(ax.get_title(), int(ax.images[0].get_array()[0, 0])) for ax in fig.axes if ax.images]
    assert shown == [("disgust -> fear", 1), ("sad -> angry", 4), ("angry -> neutral", 7)]

    empty = misclassified_grid(images, true, true, CLASS_NAMES)
    assert not any(ax.images for ax in empty.axes)
    assert "no misclassified images" in [t.get_text() for ax in empty.axes for t in ax.texts]


def test_training_curves_plot_each_series_against_step():
    records = [
        {"step": 20, "split": "train", "train/loss": 1.5, "train/lr": 1e-3},
        {"step": 10, "split": "train", "train/loss": 2.0, "train/lr": 5e-4},
        {"step": 20, "split": "validation", "validation/loss": 1.7, "validation/accuracy": 0.4,
         "validation/macro_f1": 0.3},
        {"step": 20, "split": "test", "test/accuracy": 0.9},  # not a training curve
    ]  # fmt: skip
    fig = training_curves(records)
    lines = {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for ax in fig.axes
        for line in ax.lines
    }
    assert lines == {
        "train/loss": ([10, 20], [2.0, 1.5]),
        "validation/loss": ([20], [1.7]),
        "train/lr": ([10, 20], [5e-4, 1e-3]),
        "validation/accuracy": ([20], [0.4]),
        "validation/macro_f1": ([20], [0.3]),
    }
    assert all(ax.get_xlabel() == "step" for ax in fig.axes)

    only_train = training_curves(records[:2])
    assert "no data" in [t.get_text() for t in only_train.axes[2].texts]


def test_save_figure_writes_png_atomically(tmp_path):
    path = tmp_path / "figs" / "cm.png"
    fig = confusion_matrix_figure(torch.eye(7, dtype=torch.int64), CLASS_NAMES)
    assert save_figure(fig, path) == path
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]
    assert fig.axes == []  # released

    save_figure(training_curves([]), path)  # replaces the earlier file
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]
