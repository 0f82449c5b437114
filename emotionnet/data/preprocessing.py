"""How a 48x48 uint8 face becomes the model's float input. Saved with every exported model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class Preprocessing:
    """Resize to `input_size`, scale to [0, 1], normalize with FER2013's pixel statistics.

    mean/std are the training split's pixel mean and standard deviation (0.508 / 0.255 on the real
    FER2013 Training rows), rounded so that the synthetic demo data needs no special case.
    """

    input_size: int = 48
    mean: float = 0.5
    std: float = 0.25

    def transform(self) -> v2.Compose:
        """uint8 (..., 1, H, W) tensor -> normalized float32 (..., 1, input_size, input_size)."""
        return v2.Compose(
            [
                v2.Resize((self.input_size, self.input_size), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([self.mean], [self.std]),
            ]
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocess uint8 faces shaped (H, W), (B, H, W) or (B, 1, H, W) into (B, 1, S, S) floats."""
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 faces, got {images.dtype}")
        if images.ndim == 2:
            images = images[None]
        if images.ndim == 3:
            images = images[:, None]
        return self.transform()(images)
