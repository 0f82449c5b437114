"""The one result type of an evaluation, whoever ran it (the trainer or `emotionnet-eval`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emotionnet.evaluation.metrics import ClassificationReport


@dataclass
class EvalResult:
    report: ClassificationReport
    loss: float  # mean negative log-likelihood of the (averaged) probabilities
    probabilities: torch.Tensor  # (N, K), in dataset order
    labels: torch.Tensor  # (N,)
    row_ids: torch.Tensor  # (N,) the source CSV's line numbers

    def metrics(self, prefix: str) -> dict[str, float]:
        """The scalar metrics (metrics.jsonl, MLflow). Per-class figures are a table and a bar chart in the
        evaluation's report (reports.py), not a metric each: one chart per class is noise in MLflow."""
        return {
            f"{prefix}/loss": self.loss,
            f"{prefix}/accuracy": self.report.accuracy,
            f"{prefix}/macro_f1": self.report.macro_f1,
            f"{prefix}/n": float(self.report.n),
        }
