"""`emotionnet-eval [MODEL...] DATA`: accuracy, macro-F1, per-class table and confusion matrix of a model
(or an ensemble of models, probabilities averaged) on a prepared dataset split or a FER2013 CSV."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from data_prep.schema import SPLITS
from emotionnet.cli import add_inference_options, report_user_error
from emotionnet.config.schema import TrackingConfig
from emotionnet.data.transforms import TTA_MODES
from emotionnet.errors import UserError
from emotionnet.evaluation.evaluate import (
    ALL_ROWS,
    DEFAULT_ARROW_SPLIT,
    EvalInputError,
    MlflowRunLogger,
    check_data_path,
    evaluate,
    metric_prefix,
    open_data,
)
from emotionnet.evaluation.plots import confusion_matrix_figure, save_figure
from emotionnet.evaluation.result import EvalResult
from emotionnet.exit_codes import ExitCode, command_parser
from emotionnet.inference.ensemble import (
    DEFAULT_MODEL_ENV,
    FORWARD_BATCH,
    Ensemble,
    pick_device,
)
from emotionnet.tracking.mlflow_tracker import short_http_retries

PROG = "emotionnet-eval"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
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
        "--batch-size",
        type=_positive,
        default=FORWARD_BATCH,
        help=f"images per forward pass, TTA views included (default {FORWARD_BATCH})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--confusion-png",
        metavar="PATH",
        help="confusion-matrix image (default confusion_matrix_<split>.png)",
    )
    parser.add_argument("--mlflow-run-id", metavar="ID", help="also log metrics and artifacts to this run")
    add_inference_options(parser)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def run(args: argparse.Namespace) -> tuple[dict, EvalResult, tuple[str, ...]]:
    """Evaluate as the command line asks; returns the JSON summary, the outcome and the class names."""
    *model_specs, data = args.paths
    progress = not args.no_progress
    check_data_path(data)
    if args.mlflow_run_id:
        short_http_retries(TrackingConfig())  # a dead server: seconds, not MLflow's minutes of retries
    logger = MlflowRunLogger(args.mlflow_run_id) if args.mlflow_run_id else None
    ensemble = Ensemble.load(model_specs, pick_device(args.device), runtime=args.runtime)
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
        "runtime": args.runtime,
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
    except UserError as err:
        return report_user_error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_text(summary, outcome.report.format_table(names)))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
