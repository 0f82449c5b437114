"""What training augments (AugmentConfig), batch mixing and test-time-augmentation views.

The per-face augmentation itself is data/augment.py (batched on the training device). Mixing and TTA
views work on a preprocessed batch wherever it is (the training device): one set of ops per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from emotionnet.data.preprocessing import Preprocessing

TTAMode = Literal["none", "flip", "tencrop"]
TTA_MODES: tuple[str, ...] = ("none", "flip", "tencrop")
# Ten-crop TTA takes crops of this fraction of the input side, resized back to the input size.
TENCROP_FRACTION = 0.875


@dataclass
class AugmentConfig:
    """Training augmentations; each one is off at 0 (probabilities, magnitudes) or None (ranges)."""

    hflip_p: float = 0.5
    rotation_degrees: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    affine_translate: float = 0.1  # largest shift, as a fraction of the side
    affine_scale: tuple[float, float] | None = (0.9, 1.1)
    affine_shear: float = 5.0  # degrees, along x
    erasing_p: float = 0.25  # applied last, on the normalized image (erased pixels become the mean)
    erasing_scale: tuple[float, float] = (0.02, 0.15)  # erased area as a fraction of the image
    random_resized_crop: tuple[float, float] | None = None  # crop area fraction range; None = off
    # Batch-level mixing (torchvision's MixUp / CutMix, Beta(alpha, alpha)); both > 0: one of them per batch.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so configs compare and hash consistently.
        for name in ("affine_scale", "erasing_scale", "random_resized_crop"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _range(name, value))
        for name in ("hflip_p", "erasing_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in (
            "rotation_degrees",
            "brightness",
            "contrast",
            "affine_translate",
            "affine_shear",
            "mixup_alpha",
            "cutmix_alpha",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        if self.affine_translate > 1:
            raise ValueError(
                f"augment.affine_translate is a fraction of the side, got {self.affine_translate}"
            )
        for name in ("erasing_scale", "random_resized_crop"):
            value = getattr(self, name)
            if value is not None and not 0 < value[0] <= value[1] <= 1:
                raise ValueError(
                    f"augment.{name} must be an area fraction range 0 < lo <= hi <= 1, got {value}"
                )


def _range(name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2 or value[0] > value[1] or value[0] <= 0:
        raise ValueError(f"augment.{name} must be a range [lo, hi] with 0 < lo <= hi, got {list(value)}")
    return (float(value[0]), float(value[1]))


def build_batch_mixing(aug: AugmentConfig, num_classes: int) -> v2.Transform | None:
    """(images, int labels) -> (mixed images, soft labels (B, K)); None when mixing is off."""
    mixers: list[v2.Transform] = []
    if aug.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
    if aug.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def tta_views(batch: torch.Tensor, mode: TTAMode, pre: Preprocessing) -> torch.Tensor:
    """All views to average for test-time augmentation of a preprocessed batch (B, 1, S, S) -> (V, B, 1, S, S).

    none: V=1, the batch itself. flip: V=2, the batch and its horizontal flip. tencrop: V=10, the four
    corner and the centre crops of side round(0.875 * S), resized back to S, and their horizontal flips.
    """
    size = pre.input_size
    if batch.ndim != 4 or batch.shape[1] != 1 or tuple(batch.shape[-2:]) != (size, size):
        raise ValueError(f"expected a preprocessed batch (B, 1, {size}, {size}), got {tuple(batch.shape)}")
    if mode == "none":
        return batch[None]
    if mode == "flip":
        return torch.stack([batch, F.horizontal_flip(batch)])
    if mode == "tencrop":
        crops = torch.cat(F.five_crop(batch, [round(TENCROP_FRACTION * size)] * 2))
        resized = F.resize(crops, [size, size], antialias=True).unflatten(0, (5, len(batch)))
        # F.ten_crop's other five are the crops of the mirrored batch: the mirrored resized crops with left
        # and right corners swapped. Mirroring after the resize halves the resizing.
        return torch.cat([resized, F.horizontal_flip(resized[[1, 0, 3, 2, 4]])])
    raise ValueError(f"unknown TTA mode {mode!r}; expected one of {', '.join(TTA_MODES)}")
