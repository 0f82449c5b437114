"""`RunRecorder`: what a training run writes about itself, and the callbacks (trackers) told about it.

On the main process: `environment.jsonl` and the augmentation grid at the start, every metric in
`metrics.jsonl`, each evaluation's report files, the training curves at the end. Callbacks hear of each
after the run's own copy is written, so a tracker that fails loses nothing the run directory keeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from emotionnet.data.augment import AUGMENT_GRID_NAME, write_augment_grid
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.evaluation.reports import (
    evaluation_report_name,
    write_evaluation_report,
    write_training_curves,
)
from emotionnet.evaluation.result import EvalResult
from emotionnet.train.callbacks import TrainerCallback, TrainerView
from emotionnet.train.metrics_log import MetricsLog

log = logging.getLogger(__name__)


class RunRecorder:
    def __init__(self, trainer: TrainerView, callbacks: Sequence[TrainerCallback]):
        self.trainer = trainer
        self.main = trainer.accelerator.is_main_process
        self.callbacks = list(callbacks) if self.main else []

    def start(self, preprocessing: Preprocessing) -> None:
        """The environment record and the augmentation grid (before on_start, which mirrors both)."""
        t = self.trainer
        if self.main:
            record = {"time": time.time(), "step": t.progress.step, **t.environment, **t.resolved}
            MetricsLog(t.layout.environment).append(record)
            grid = t.layout.reports / AUGMENT_GRID_NAME
            write_augment_grid(grid, t.cfg.augment, preprocessing, t.cfg.run.seed, t.splits["train"])
        for callback in self.callbacks:
            callback.on_start(t)

    def log(self, metrics: dict[str, float], split: str) -> None:
        """Append to metrics.jsonl (always), then hand the metrics to the callbacks."""
        p = self.trainer.progress
        if self.main:
            record = {"step": p.step, "epoch": p.epoch, "split": split, "time": time.time(), **metrics}
            self.trainer.metrics_log.append(record)
        for callback in self.callbacks:
            callback.on_metrics(self.trainer, metrics, p.step)

    def report(self, name: str, split: str, result: EvalResult) -> None:
        """An evaluation's metrics and report files (the run's own copy, whatever tracks it)."""
        self.log(result.metrics(name), split=name)
        if not self.main:
            return
        t, p = self.trainer, self.trainer.progress
        directory = write_evaluation_report(
            t.layout.reports / evaluation_report_name(name, p.epoch),
            result,
            t.splits.get(split),
            title=f"{name} · epoch {p.epoch} · step {p.step}",
            misclassified_max=t.cfg.tracking.misclassified_max,
        )
        for callback in self.callbacks:
            callback.on_evaluation(t, name, result, directory)

    def end(self, exit_code: int) -> None:
        if self.main:
            try:
                write_training_curves(self.trainer.metrics_log.read(), self.trainer.layout.reports)
            except OSError as err:  # e.g. the disk that just filled: the run's own error says so, once
                log.warning("training curves not written: %s", err)
        for callback in self.callbacks:
            callback.on_end(self.trainer, exit_code)
