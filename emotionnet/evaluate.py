"""`emotionnet-eval [MODEL...] DATA`: accuracy, macro-F1, per-class table and confusion matrix of a model
(or an ensemble of models, probabilities averaged) on a prepared dataset split or a FER2013 CSV."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_prep.prepare import PrepOptions, prepare
from data_prep.records import PrepError
from data_prep.schema import SPLITS, USAGE_TO_SPLIT
from emotionnet.data import DatasetNotPreparedError, load_splits
from emotionnet.export import DESCRIPTION_NAME
from emotionnet.inference import DEFAULT_MODEL_ENV, Ensemble, ModelLoadError, pick_device
from emotionnet.metrics import ClassificationReport, confusion_matrix
from emotionnet.plots import confusion_matrix_figure, save_figure
from emotionnet.transforms import TTA_MODES, TTAMode

PROG = "emotionnet-eval"
# An Arrow dataset is scored on PublicTest unless told otherwise: it is the split models are selected and
# reported on; the held-out PrivateTest (`--split test`) is meant to be looked at once, at the end.
DEFAULT_ARROW_SPLIT = "validation"
ALL_ROWS = "all"


class EvalInputError(ValueError):
    """Bad data or tracking arguments; the message is one sentence for the user."""


@dataclass
class EvalData:
    rows: datasets.Dataset
    label: str  # the split's name, or "all" for every row of a CSV
    source: str


@dataclass
class EvalOutcome:
    report: ClassificationReport
    loss: float  # mean negative log-likelihood of the (averaged) probabilities
    probabilities: torch.Tensor  # (N, K), in dataset order
    labels: torch.Tensor  # (N,)
    row_ids: torch.Tensor  # (N,) the source CSV's line numbers

    def metrics(self, prefix: str, class_names: tuple[str, ...]) -> dict[str, float]:
        values = {
            f"{prefix}/accuracy": self.report.accuracy,
            f"{prefix}/macro_f1": self.report.macro_f1,
            f"{prefix}/loss": self.loss,
            f"{prefix}/n": float(self.report.n),
        }
        for name, acc in zip(class_names, self.report.recall.tolist(), strict=True):
            values[f"{prefix}/accuracy_{name}"] = acc
        return values


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
        splits = load_splits(path)
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
    batch_size: int = 256,
    progress: bool = True,
) -> EvalOutcome:
    """Score every row in batches (one pass over the data for all ensemble members)."""
    probs, labels, row_ids = [], [], []
    batches = rows.with_format("numpy", columns=["image", "label", "row_id"]).iter(batch_size=batch_size)
    total = -(-len(rows) // batch_size)
    for batch in tqdm(batches, total=total, desc="eval", unit="batch", disable=not progress, file=sys.stderr):
        # The numpy formatter widens the uint8 faces; the models' preprocessing expects uint8.
        faces = torch.from_numpy(batch["image"].astype("uint8"))
        probs.append(ensemble.predict_proba(faces, tta))
        labels.append(torch.from_numpy(batch["label"]).long())
        row_ids.append(torch.from_numpy(batch["row_id"]).long())
    probs_t, labels_t = torch.cat(probs), torch.cat(labels)
    report = ClassificationReport(confusion_matrix(labels_t, probs_t.argmax(-1), len(ensemble.class_names)))
    loss = float(F.nll_loss(probs_t.clamp(min=1e-12).log(), labels_t))
    return EvalOutcome(report, loss, probs_t, labels_t, torch.cat(row_ids))


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

    def log(self, prefix: str, outcome: EvalOutcome, summary: dict, class_names, png: Path) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in outcome.metrics(prefix, class_names).items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
            self.client.log_dict(self.run_id, summary, f"evaluation/{prefix}.json")
            self.client.log_artifact(self.run_id, str(png), artifact_path="evaluation")
        except self._error as err:
            raise EvalInputError(
                f"logging to MLflow run {self.run_id} failed: {err.message.splitlines()[0]}"
            ) from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] [MODEL ...] DATA",
        description="Evaluate EmotionNet model(s) on a prepared dataset split or a FER2013 CSV. Several "
        "models form an ensemble (class probabilities averaged).",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="[MODEL ...] DATA",
        help="MODEL: a model export directory (a run's best/ or final/) or an MLflow model URI "
        f"(runs:/<id>/model, models:/<name>@<alias>); none: ${DEFAULT_MODEL_ENV} or the bundled model. "
        "DATA (last): a dataset directory written by emotionnet-prep, or a FER2013 .csv/.csv.gz",
    )
    parser.add_argument(
        "--split",
        choices=[*SPLITS, ALL_ROWS],
        help=f"rows to score: a dataset directory defaults to {DEFAULT_ARROW_SPLIT} (PublicTest), "
        f"a CSV to {ALL_ROWS} its rows",
    )
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation")
    parser.add_argument(
        "--batch-size", type=_positive, default=256, help="faces per forward pass (default 256)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--confusion-png",
        metavar="PATH",
        help="confusion-matrix image (default confusion_matrix_<split>.png)",
    )
    parser.add_argument("--mlflow-run-id", metavar="ID", help="also log metrics and artifacts to this run")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def run(args: argparse.Namespace) -> tuple[dict, EvalOutcome, tuple[str, ...]]:
    """Evaluate as the command line asks; returns the JSON summary, the outcome and the class names."""
    *model_specs, data = args.paths
    progress = not args.no_progress
    check_data_path(data)
    logger = MlflowRunLogger(args.mlflow_run_id) if args.mlflow_run_id else None
    ensemble = Ensemble.load(model_specs, pick_device(args.device))
    with tempfile.TemporaryDirectory(prefix="emotionnet-eval-") as workdir:  # a CSV's prepared copy
        dataset = open_data(data, args.split, Path(workdir), progress)
        outcome = evaluate(ensemble, dataset.rows, args.tta, args.batch_size, progress)
    names = ensemble.class_names
    summary = {
        **outcome.report.as_dict(names),
        "loss": outcome.loss,
        "models": ensemble.sources,
        "data": dataset.source,
        "split": dataset.label,
        "tta": args.tta,
    }
    png = Path(args.confusion_png or f"confusion_matrix_{dataset.label}.png")
    title = f"{Path(data).name} ({dataset.label}, n={outcome.report.n}), {len(ensemble.members)} model(s)"
    try:
        save_figure(confusion_matrix_figure(outcome.report.confusion, names, title=title), png)
    except OSError as err:
        raise EvalInputError(f"cannot write {png}: {err.strerror or err}") from err
    summary["confusion_png"] = str(png)
    if logger is not None:
        logger.log(metric_prefix(dataset.label, args.tta), outcome, summary, names, png)
        summary["mlflow_run_id"] = args.mlflow_run_id
    return summary, outcome, names


def format_text(summary: dict, report: str) -> str:
    models = ", ".join(summary["models"])
    ensemble = (
        f" (ensemble of {len(summary['models'])}, probabilities averaged)"
        if len(summary["models"]) > 1
        else ""
    )
    return (
        f"model{'s' * (len(summary['models']) > 1)}: {models}{ensemble}\n"
        f"data: {summary['data']} [{summary['split']}], TTA {summary['tta']}\n"
        f"{report}\n"
        f"confusion matrix: {summary['confusion_png']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary, outcome, names = run(args)
    except (EvalInputError, ModelLoadError, DatasetNotPreparedError, PrepError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_text(summary, outcome.report.format_table(names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
