"""`LossWindow`: the training loss and throughput between two log points, kept on the device so that the
hot loop never waits for it."""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator


class LossWindow:
    def __init__(self, device: torch.device):
        self.device = device
        self.grad_norm: torch.Tensor | None = None  # the last clipped step's pre-clip norm
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.batches = 0
        self.images = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, images: int, grad_norm: torch.Tensor | None) -> None:
        self.loss_sum += loss.detach().float()
        self.batches += 1
        self.images += images
        if grad_norm is not None:
            self.grad_norm = grad_norm

    def flush(self, accelerator: Accelerator) -> tuple[float, float]:
        """(mean loss across ranks, global images per second) since the last flush."""
        stats = torch.stack(
            [
                self.loss_sum,
                torch.tensor(float(self.batches), device=self.device),
                torch.tensor(float(self.images), device=self.device),
            ]
        )
        loss_sum, batches, images = accelerator.reduce(stats, reduction="sum").tolist()
        elapsed = time.perf_counter() - self.started
        self._reset()
        return loss_sum / max(batches, 1), images / max(elapsed, 1e-9)
