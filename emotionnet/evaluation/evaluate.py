"""Score a model (or an ensemble, probabilities averaged) on a prepared dataset split or a FER2013 CSV:
the library behind `emotionnet-eval`."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_prep.prepare import PrepOptions, prepare
from data_prep.schema import USAGE_TO_SPLIT
from emotionnet.data.loaders import load_splits
from emotionnet.data.transforms import TTAMode
from emotionnet.errors import UserError
from emotionnet.evaluation.metrics import ClassificationReport, confusion_matrix
from emotionnet.evaluation.plots import per_class_figure
from emotionnet.evaluation.result import EvalResult
from emotionnet.inference.ensemble import FORWARD_BATCH, Ensemble
from emotionnet.inference.export import DESCRIPTION_NAME

# An Arrow dataset is scored on PublicTest unless told otherwise: it is the split models are selected and
# reported on; the held-out PrivateTest (`--split test`) is meant to be looked at once, at the end.
DEFAULT_ARROW_SPLIT = "validation"
ALL_ROWS = "all"


class EvalInputError(UserError):
    """Bad data or tracking arguments; the message is one sentence for the user."""


@dataclass
class EvalData:
    rows: datasets.Dataset
    label: str  # the split's name, or "all" for every row of a CSV
    source: str


def check_data_path(data: str) -> Path:
    """Fail fast (before models load or a CSV converts) on a DATA that is missing or is a model."""
    path = Path(data)
    if not path.exists():
        raise EvalInputError(f"{data}: no such dataset directory or CSV file")
    if (path / DESCRIPTION_NAME).is_file():
        raise EvalInputError(f"{data} is a model export, not data: DATA comes last, after the models")
    return path


def open_data(data: str, split: str | None, workdir: Path, progress: bool = True) -> EvalData:
    """A prepared Arrow dataset's split, or a FER2013 CSV converted by the prep code into `workdir`.

    A CSV without `split` gives all its rows, whatever their Usage."""
    path = check_data_path(data)
    if path.is_dir():
        # Figures from damaged data would look like a model's: hash every shard (0.1 s for FER2013's 78 MB).
        splits = load_splits(path, verify_hashes=True)
        label = split or DEFAULT_ARROW_SPLIT
    else:
        prepare(path, workdir / "prepared", PrepOptions(progress=progress))
        splits = load_splits(workdir / "prepared")
        label = split or ALL_ROWS
    if label == ALL_ROWS:
        return EvalData(datasets.concatenate_datasets(list(splits.values())), ALL_ROWS, data)
    if label not in splits:
        usage = {v: k for k, v in USAGE_TO_SPLIT.items()}[label]
        raise EvalInputError(
            f"{data} has no {label!r} split ({usage} rows); it has {', '.join(splits) or 'none'}"
        )
    if len(splits[label]) == 0:
        raise EvalInputError(f"{data}: the {label!r} split has no rows")
    return EvalData(splits[label], label, data)


def evaluate(
    ensemble: Ensemble,
    rows: datasets.Dataset,
    tta: TTAMode = "none",
    batch_size: int = FORWARD_BATCH,
    progress: bool = True,
) -> EvalResult:
    """Score every row in batches (one pass over the data for all ensemble members).

    batch_size: rows read at a time, and images per forward pass (TTA views included)."""
    batches = rows.with_format("numpy", columns=["image", "label", "row_id"]).iter(batch_size=batch_size)
    # The numpy formatter widens the uint8 faces; the models' preprocessing expects uint8.
    faces_labels_rows = (
        (
            torch.from_numpy(b["image"].astype("uint8")),
            torch.from_numpy(b["label"]),
            torch.from_numpy(b["row_id"]),
        )
        for b in batches
    )
    return score(
        faces_labels_rows,
        lambda faces: ensemble.predict_proba(faces, tta, batch_size),
        len(ensemble.class_names),
        total=-(-len(rows) // batch_size),
        progress=progress,
    )


def score(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    predict_proba: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    gather: Callable[[tuple], tuple] = lambda tensors: tensors,
    total: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """The evaluation loop, whoever runs it: (uint8 faces, labels, row ids) batches -> EvalResult.

    gather: collects each batch's tensors from every process, each sample once (a training run's
    `accelerator.gather_for_metrics`); the default is one process."""
    probs, labels, row_ids = [], [], []
    for faces, label, row_id in tqdm(
        batches, total=total, desc="eval", unit="batch", leave=False, disable=not progress, file=sys.stderr
    ):
        prob = predict_proba(faces).to(label.device)  # gathered with the labels, on their device
        for store, value in zip((probs, labels, row_ids), gather((prob, label, row_id)), strict=True):
            store.append(value.cpu())
    probs_t, labels_t = torch.cat(probs).float(), torch.cat(labels).long()
    report = ClassificationReport(confusion_matrix(labels_t, probs_t.argmax(-1), num_classes))
    loss = float(F.nll_loss(probs_t.clamp(min=1e-12).log(), labels_t))
    return EvalResult(report, loss, probs_t, labels_t, torch.cat(row_ids).long())


def metric_prefix(label: str, tta: str) -> str:
    """MLflow metric prefix, distinct from the trainer's own `validation/` and `test/` metrics."""
    return f"eval_{label}" + (f"_{tta}" if tta != "none" else "")


class MlflowRunLogger:
    """Logs an evaluation into an existing MLflow run (tracking URI from MLFLOW_TRACKING_URI)."""

    def __init__(self, run_id: str):
        from mlflow import MlflowClient  # slow import: only when asked to log
        from mlflow.exceptions import MlflowException

        self._error = MlflowException
        self.client = MlflowClient()
        self.run_id = run_id
        try:
            self.client.get_run(run_id)  # fail before the evaluation, not after it
        except MlflowException as err:
            raise EvalInputError(
                f"MLflow run {run_id} cannot be used at {self.client.tracking_uri}: {err.message.splitlines()[0]}"
            ) from err

    def log(self, prefix: str, outcome: EvalResult, summary: dict, class_names, png: Path) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in outcome.metrics(prefix).items()]
        rows = outcome.report.per_class(class_names)
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
            self.client.log_dict(self.run_id, summary, f"evaluation/{prefix}.json")
            self.client.log_artifact(self.run_id, str(png), artifact_path="evaluation")
            # Per-class figures as one table and one bar chart, not a single-point metric per class.
            self.client.log_table(
                self.run_id, {k: [r[k] for r in rows] for k in rows[0]}, f"evaluation/{prefix}_per_class.json"
            )
            figure = per_class_figure(rows, f"{prefix}: per class")
            self.client.log_figure(self.run_id, figure, f"evaluation/{prefix}_per_class.png")
            figure.clear()
        except self._error as err:
            raise EvalInputError(
                f"logging to MLflow run {self.run_id} failed: {err.message.splitlines()[0]}"
            ) from err
