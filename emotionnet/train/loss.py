"""The training loss: cross-entropy with label smoothing and a mild remedy for rare classes
(square-root class weights or logit adjustment); see LossConfig."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from emotionnet.config.schema import LossConfig


def class_weights(kind: str, counts: Sequence[int]) -> torch.Tensor | None:
    """Per-class weights from the training split's class counts, with an average sample weight of 1.

    "balanced": N / (K * n_c); "sqrt": its square root, rescaled; "none": None. Absent classes count as 1.
    """
    if kind == "none":
        return None
    n = torch.tensor(counts, dtype=torch.float64).clamp(min=1)
    weights = n.sum() / (len(n) * n)
    if kind == "sqrt":
        weights = weights.sqrt()
    weights = weights * n.sum() / (weights * n).sum()
    return weights.float()


class Criterion:
    """logits (B, K), targets (B,) class indices or (B, K) soft targets -> mean loss (float32)."""

    def __init__(self, cfg: LossConfig, counts: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.label_smoothing = cfg.label_smoothing
        weights = class_weights(cfg.class_weights, counts)
        self.weight = None if weights is None else weights.to(device)
        self.logit_offset = None
        if cfg.logit_adjustment > 0:
            n = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
            self.logit_offset = (cfg.logit_adjustment * (n / n.sum()).log()).to(device)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.logit_offset is not None:
            logits = logits + self.logit_offset
        return F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing)
