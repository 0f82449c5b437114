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
        # AveragedModel holds the copy and its update counter (n_averaged, kept on the host) in one
        # state dict; its own update_parameters is not used: it reads the counter as a bool and moves it
        # to the device on every update, a host-device round trip per step on a GPU.
        self.averaged = AveragedModel(model, use_buffers=True)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self) -> None:
        """Average the source's floating-point weights and buffers in; copy its integer counters."""
        updates = int(self.averaged.n_averaged)  # a host tensor: no device sync
        pairs = zip(
            [*self.module.parameters(), *self.module.buffers()],
            [t.detach() for t in (*self.source.parameters(), *self.source.buffers())],
            strict=True,
        )
        averaged, current, counters, counts = [], [], [], []
        for mine, theirs in pairs:
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs)
            else:  # BatchNorm's num_batches_tracked: a counter, not a mean
                counters.append(mine)
                counts.append(theirs)
        if counters:
            torch._foreach_copy_(counters, counts)
        if updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - min(self.decay, (1.0 + updates) / (10.0 + updates)))
        self.averaged.n_averaged += 1
