"""Hooks the trainer calls on the main process, so tracking (MLflow) plugs in without touching the loop.

Hooks see the trainer through `TrainerView`, the few things an observer may read, so this module does
not depend on the trainer that calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import datasets
from accelerate import Accelerator

from emotionnet.config.schema import TrainConfig
from emotionnet.evaluation.result import EvalResult
from emotionnet.run_layout import RunLayout
from emotionnet.train.metrics_log import MetricsLog
from emotionnet.train.progress import TrainerProgress


class TrainerView(Protocol):
    cfg: TrainConfig
    accelerator: Accelerator
    run_dir: Path
    layout: RunLayout
    progress: TrainerProgress
    metrics_log: MetricsLog
    splits: dict[str, datasets.Dataset]
    environment: dict[str, str]  # hosts, device, world size, precision, versions (environment.jsonl)
    resolved: dict[str, str]  # settings derived at start: the scaled learning rate, the global batch


class TrainerCallback:
    """Base class: every hook is a no-op. Hooks run on the main process only, after metrics.jsonl is written."""

    def on_start(self, trainer: TrainerView) -> None:
        """Before the first step (also after a resume: `trainer.progress.step` says where)."""

    def on_metrics(self, trainer: TrainerView, metrics: dict[str, float], step: int) -> None:
        """Scalar metrics, already reduced across processes."""

    def on_evaluation(self, trainer: TrainerView, split: str, result: EvalResult, report_dir: Path) -> None:
        """A full evaluation (validation each epoch, test at the end); its report files are in `report_dir`."""

    def on_end(self, trainer: TrainerView, exit_code: int) -> None:
        """The run ended (exit code from emotionnet.exit_codes); the training curves are in the reports.

        Called in a `finally`: when an exception ends the run it is still in flight, and `sys.exc_info()`
        holds it (the MLflow tracker tags its run with it)."""
