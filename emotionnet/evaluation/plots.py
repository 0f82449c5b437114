"""Figures for runs and evaluations: confusion matrix, per-class bars, misclassified faces, training curves,
and a video's emotions over time.

Every function returns a matplotlib Figure drawn on the Agg canvas. Figures are made without pyplot: no
display, no GUI backend, no process-wide backend switch and no global figure registry to leak into (a
training run draws one per epoch). `save_figure` writes one atomically and releases it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data_prep.files import atomic_file


def _figure(**kwargs) -> Figure:
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


# metrics.jsonl keys drawn by `training_curves`, one panel each: (panel title, [(split, key), ...]).
_CURVE_PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("loss", (("train", "train/loss"), ("validation", "validation/loss"))),
    ("learning rate", (("train", "train/lr"),)),
    (
        "validation accuracy / macro-F1",
        (("validation", "validation/accuracy"), ("validation", "validation/macro_f1")),
    ),
)


def confusion_matrix_figure(
    confusion: torch.Tensor, class_names: Sequence[str], normalize: bool = True, title: str = ""
) -> Figure:
    """Heat map of counts[true, predicted]; with `normalize`, each row divided by its class's support."""
    counts = confusion.detach().cpu().double().numpy()
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"confusion matrix is {counts.shape}, expected {len(class_names)} x {len(class_names)}"
        )
    values = counts / np.clip(counts.sum(1, keepdims=True), 1, None) if normalize else counts
    k = len(class_names)
    fig = _figure(figsize=(1.0 + 0.85 * k, 0.8 + 0.8 * k))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, shrink=0.85)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = 0.5 * (1 if normalize else max(values.max(), 1))
    for i in range(k):
        for j in range(k):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] > threshold else "black")  # fmt: skip
    ax.set_title(title or ("confusion matrix (row-normalized)" if normalize else "confusion matrix"))
    return fig


def per_class_figure(rows: Sequence[dict], title: str = "") -> Figure:
    """Precision, recall and F1 of each class as grouped bars (`ClassificationReport.per_class` rows), the
    class's support under its name."""
    measures = ("precision", "recall", "f1")
    fig = _figure(figsize=(1.0 + 1.1 * len(rows), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(measures)
    for m, measure in enumerate(measures):
        positions = np.arange(len(rows)) + (m - (len(measures) - 1) / 2) * width
        bars = ax.bar(positions, [row[measure] for row in rows], width, label=measure)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(range(len(rows)), [f"{row['class']}\nn={row['support']}" for row in rows])
    ax.set_ylim(0, 1.08)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title or "per class")
    return fig


def misclassified_grid(
    images: np.ndarray,
    true: Sequence[int],
    pred: Sequence[int],
    class_names: Sequence[str],
    max_items: int = 36,
) -> Figure:
    """The first `max_items` faces whose prediction is wrong, titled `true -> predicted`."""
    images = np.asarray(images)
    true, pred = np.asarray(true), np.asarray(pred)
    if not (len(images) == len(true) == len(pred)):
        raise ValueError(f"got {len(images)} images, {len(true)} true and {len(pred)} predicted labels")
    wrong = np.flatnonzero(true != pred)[:max_items]
    cols = max(1, min(6, len(wrong)))
    rows = max(1, -(-len(wrong) // cols))
    fig = _figure(figsize=(1.6 * cols, 1.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{class_names[true[index]]} -> {class_names[pred[index]]}", fontsize=7)
    if len(wrong) == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle("misclassified (true -> predicted)", fontsize=9)
    return fig


def training_curves(records: Sequence[dict]) -> Figure:
    """Loss, learning rate and validation accuracy / macro-F1 against step, from metrics.jsonl records."""
    fig = _figure(figsize=(5 * len(_CURVE_PANELS), 3.6))
    axes = fig.subplots(1, len(_CURVE_PANELS))
    for ax, (title, series) in zip(axes, _CURVE_PANELS, strict=True):
        drawn = False
        for split, key in series:
            points = sorted((r["step"], r[key]) for r in records if r.get("split") == split and key in r)
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if split == "validation" else None, markersize=3, label=key)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig


def emotions_over_time(
    seconds: Sequence[float], probabilities: np.ndarray, class_names: Sequence[str], title: str = ""
) -> Figure:
    """Each class's probability (columns of `probabilities`, one row per sampled frame; NaN where the frame
    has no face: a gap in the lines) against the frame's time."""
    probabilities = np.asarray(probabilities, dtype=float).reshape(len(seconds), len(class_names))
    fig = _figure(figsize=(9, 3.6))
    ax = fig.subplots()
    for k, name in enumerate(class_names):
        ax.plot(seconds, probabilities[:, k], marker="o", markersize=2.5, label=name)
    if not np.isfinite(probabilities).any():
        ax.text(0.5, 0.5, "no face found", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title or "emotions over time")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write the figure (format from the suffix) to a sibling temp file, rename it into place, release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    finally:
        fig.clear()  # drop the artists now rather than at the next garbage collection
    return path
