"""How a 48x48 uint8 face becomes the model's float input. Saved with every exported model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F


@dataclass(frozen=True)
class Preprocessing:
    """Resize to `input_size`, scale to [0, 1], normalize with FER2013's pixel statistics.

    mean/std are the training split's pixel mean and standard deviation (0.508 / 0.255 on the real
    FER2013 Training rows), rounded so that the synthetic demo data needs no special case.
    Every step works on a whole batch on any device; training augmentation (data/augment.py) runs
    between `resize` and `normalize`.
    """

    input_size: int = 48
    mean: float = 0.5
    std: float = 0.25

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1, H, W) -> uint8 (B, 1, input_size, input_size) (the same tensor when no resize)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 faces, got {images.dtype}")
        return F.resize(images, [self.input_size, self.input_size], antialias=True)

    def scale(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1, H, W) -> float32 in [0, 1], (B, 1, input_size, input_size)."""
        return F.to_dtype(self.resize(images), torch.float32, scale=True)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] floats -> zero-mean, unit-variance inputs (a new tensor)."""
        return (images - self.mean) / self.std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocess uint8 faces shaped (H, W), (B, H, W) or (B, 1, H, W) into (B, 1, S, S) floats."""
        if images.ndim == 2:
            images = images[None]
        if images.ndim == 3:
            images = images[:, None]
        return self.normalize(self.scale(images))
