"""A run's report files (figures + tables) under `<run_dir>/reports/`, which trackers then upload.

Writing them into the run directory first means they survive a tracking outage (the replay command
uploads them later) and can be looked at without MLflow.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import datasets
import numpy as np

from data_prep.files import write_atomic
from data_prep.schema import CLASS_NAMES
from emotionnet.evaluation.plots import (
    confusion_matrix_figure,
    misclassified_grid,
    per_class_figure,
    save_figure,
    training_curves,
)
from emotionnet.evaluation.result import EvalResult

CURVES_NAME = "training_curves.png"
PER_CLASS_CSV, PER_CLASS_PNG = "per_class.csv", "per_class.png"


def evaluation_report_name(split: str, epoch: int) -> str:
    """Validation is evaluated every epoch (one folder each); test once, at the end."""
    return f"{split}_epoch_{epoch:03d}" if split == "validation" else split


def write_evaluation_report(
    directory: Path,
    result: EvalResult,
    split: datasets.Dataset | None,
    title: str,
    misclassified_max: int = 36,
) -> Path:
    """confusion_matrix.png (row-normalized), report.json / report.md (per-class precision, recall, F1,
    support), the per-class table and its bar chart (per_class.csv, per_class.png) and, when the split's
    images are given, misclassified.png. Returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    report = result.report
    write_atomic(
        directory / "report.json",
        json.dumps({"title": title, "loss": result.loss, **report.as_dict(CLASS_NAMES)}, indent=2) + "\n",
    )
    write_atomic(directory / "report.md", f"# {title}\n\n```\n{report.format_table(CLASS_NAMES)}\n```\n")
    rows = report.per_class(CLASS_NAMES)
    write_atomic(directory / PER_CLASS_CSV, per_class_csv(rows))
    save_figure(per_class_figure(rows, f"{title}: per class"), directory / PER_CLASS_PNG)
    save_figure(
        confusion_matrix_figure(
            report.confusion, CLASS_NAMES, normalize=True, title=f"{title} (row-normalized)"
        ),
        directory / "confusion_matrix.png",
    )
    if split is not None:
        images, true, pred = _misclassified(result, split, misclassified_max)
        save_figure(
            misclassified_grid(images, true, pred, CLASS_NAMES, misclassified_max),
            directory / "misclassified.png",
        )
    return directory


def per_class_csv(rows: list[dict]) -> str:
    """`ClassificationReport.per_class` rows as CSV text (MLflow's artifact view shows it as a table)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _misclassified(
    result: EvalResult, split: datasets.Dataset, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `limit` wrongly predicted faces (in evaluation order) with true and predicted labels."""
    columns = split.with_format("numpy")
    index_of = {int(row_id): i for i, row_id in enumerate(columns["row_id"])}
    indices = np.array([index_of[int(r)] for r in result.row_ids], dtype=np.int64)
    true = columns["label"][indices]
    pred = result.probabilities.argmax(-1).numpy()
    wrong = np.flatnonzero(true != pred)[:limit]
    images = columns[indices[wrong]]["image"] if len(wrong) else np.zeros((0, 48, 48), np.uint8)
    return images, true[wrong], pred[wrong]


def write_training_curves(records: list[dict], directory: Path) -> Path:
    """Loss, learning rate and validation accuracy / macro-F1 from metrics.jsonl records."""
    return save_figure(training_curves(records), directory / CURVES_NAME)
