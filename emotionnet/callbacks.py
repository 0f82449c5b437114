"""Hooks the trainer calls on the main process, so tracking (MLflow) plugs in without touching the loop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emotionnet.trainer import EvalResult, Trainer


class TrainerCallback:
    """Base class: every hook is a no-op. Hooks run on the main process only, after metrics.jsonl is written."""

    def on_start(self, trainer: Trainer) -> None:
        """Before the first step (also after a resume: `trainer.progress.step` says where)."""

    def on_metrics(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        """Scalar metrics, already reduced across processes."""

    def on_evaluation(self, trainer: Trainer, split: str, result: EvalResult) -> None:
        """A full evaluation (validation each epoch, test at the end), with per-sample probabilities."""

    def on_export(self, trainer: Trainer, name: str, path: Path) -> None:
        """A model export (`best`, `final`) was written to `path`."""

    def on_end(self, trainer: Trainer, exit_code: int) -> None:
        """The run ended: 0 finished, EXIT_PREEMPTED stopped to be resumed, anything else failed."""
