"""The one result type of an evaluation, whoever ran it (the trainer or `emotionnet-eval`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from data_prep.schema import CLASS_NAMES
from emotionnet.evaluation.metrics import ClassificationReport


@dataclass
class EvalResult:
    report: ClassificationReport
    loss: float  # mean negative log-likelihood of the (averaged) probabilities
    probabilities: torch.Tensor  # (N, K), in dataset order
    labels: torch.Tensor  # (N,)
    row_ids: torch.Tensor  # (N,) the source CSV's line numbers

    def metrics(self, prefix: str, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
        values = {
            f"{prefix}/loss": self.loss,
            f"{prefix}/accuracy": self.report.accuracy,
            f"{prefix}/macro_f1": self.report.macro_f1,
            f"{prefix}/n": float(self.report.n),
        }
        for name, recall in zip(class_names, self.report.recall.tolist(), strict=True):
            values[f"{prefix}/accuracy_{name}"] = recall
        return values
