"""Exponential moving average of the model's weights (and BatchNorm statistics) for evaluation."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class WeightEMA:
    """torch's AveragedModel with an EMA update whose decay ramps up as min(decay, (1 + n) / (10 + n)).

    The ramp (as in TensorFlow's ExponentialMovingAverage with num_updates) keeps the first few hundred
    steps from averaging in the random initial weights, which a fixed 0.999 would remember for ~5k steps.
    Buffers are averaged too (`use_buffers=True`), so BatchNorm statistics match the averaged weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in (0, 1) when set, got {decay}")
        self.decay = decay
        self.source = model  # the unwrapped training model, followed by every update()
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)

    def _average(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor
    ) -> None:
        """One device/dtype group of tensors; the decay stays a device tensor (no host sync per step)."""
        if not averaged[0].is_floating_point():  # BatchNorm's num_batches_tracked: a counter, not a mean
            torch._foreach_copy_(averaged, current)
            return
        weight = 1.0 - torch.clamp((1.0 + updates) / (10.0 + updates), max=self.decay)
        weight = weight.to(averaged[0].dtype)
        for avg, cur in zip(averaged, current, strict=True):
            avg.lerp_(cur, weight)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self) -> None:
        self.averaged.update_parameters(self.source)
