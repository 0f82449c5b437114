"""Classification metrics from a confusion matrix: accuracy, macro-F1, per-class precision/recall/F1."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted] as int64."""
    index = labels.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class ClassificationReport:
    confusion: torch.Tensor  # (K, K) counts, rows = true class

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def support(self) -> torch.Tensor:
        return self.confusion.sum(1)

    @property
    def recall(self) -> torch.Tensor:
        """Per-class accuracy: the fraction of each true class predicted correctly."""
        return self.confusion.diag() / self.support.clamp(min=1)

    @property
    def precision(self) -> torch.Tensor:
        return self.confusion.diag() / self.confusion.sum(0).clamp(min=1)

    @property
    def f1(self) -> torch.Tensor:
        p, r = self.precision, self.recall
        return torch.where(p + r > 0, 2 * p * r / (p + r).clamp(min=1e-12), torch.zeros_like(p))

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diag().sum() / max(self.n, 1))

    @property
    def macro_f1(self) -> float:
        return float(self.f1.mean())

    def as_dict(self, class_names: tuple[str, ...] | list[str]) -> dict:
        """JSON-ready: accuracy, macro_f1, n and a per-class table keyed by class name."""
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "n": self.n,
            "per_class": {row.pop("class"): row for row in self.per_class(class_names)},
            "confusion_matrix": self.confusion.tolist(),
        }

    def per_class(self, class_names: tuple[str, ...] | list[str]) -> list[dict]:
        """One row per class: class, accuracy (= recall), precision, recall, f1, support."""
        return [
            {
                "class": name,
                "accuracy": float(self.recall[i]),
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
            }
            for i, name in enumerate(class_names)
        ]

    def format_table(self, class_names: tuple[str, ...] | list[str]) -> str:
        lines = [f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
        for i, name in enumerate(class_names):
            lines.append(
                f"{name:<10} {self.precision[i]:>9.3f} {self.recall[i]:>7.3f} {self.f1[i]:>6.3f} "
                f"{int(self.support[i]):>8d}"
            )
        lines.append(f"accuracy {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}  n={self.n}")
        return "\n".join(lines)
