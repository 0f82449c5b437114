"""Classifier head: pooled features -> class logits."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear. LayerNorm, not BatchNorm, so batch size 1 trains."""

    def __init__(
        self, in_features: int, hidden: int = 256, dropout: float = 0.3, num_classes: int = 7
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
