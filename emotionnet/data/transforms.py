"""Training augmentation, deterministic evaluation transform and test-time-augmentation views.

Faces stay uint8 tensors from the Arrow shards to the model (no PIL round trip). Random ops run per face
(torchvision's v2 ops draw one set of parameters per call, so a batched call would augment every face
alike); the shared, deterministic Preprocessing runs once per batch, which is ~7x cheaper than per face.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from data_prep.schema import IMAGE_SIZE
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


class FaceTransform:
    """uint8 faces (1, H, W) or (B, 1, H, W) -> normalized float32 (1, S, S) or (B, 1, S, S).

    `augment` runs per face on uint8, then the batch is preprocessed at once, then `after` runs per face
    on the normalized floats. Without `seeds` the random ops draw from torch's global RNG; with `seeds`
    (one per face) each face's draws are reproducible whatever the batch, worker or process, and the
    global RNG is left untouched.
    """

    def __init__(
        self, pre: Preprocessing, augment: Sequence[v2.Transform] = (), after: Sequence[v2.Transform] = ()
    ):
        self.pre = pre
        self._augment = v2.Compose(list(augment)) if augment else None
        self._preprocess = pre.transform()
        self._after = v2.Compose(list(after)) if after else None

    @property
    def deterministic(self) -> bool:
        return self._augment is None and self._after is None

    def __call__(self, images: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim not in (3, 4):
            raise TypeError(
                f"expected uint8 faces shaped (1, H, W) or (B, 1, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        batch = images if images.ndim == 4 else images[None]
        if seeds is not None and len(seeds) != len(batch):
            raise ValueError(f"got {len(seeds)} seeds for {len(batch)} faces")
        with _single_thread():
            if self.deterministic:
                out = self._preprocess(batch)
            elif seeds is None:
                out = self._random_path(batch, None)
            else:
                with torch.random.fork_rng(devices=[]):
                    out = self._random_path(batch, seeds)
        return out if images.ndim == 4 else out[0]

    def _random_path(self, batch: torch.Tensor, seeds: Sequence[int] | None) -> torch.Tensor:
        if self._augment is not None:
            batch = _per_face(self._augment, batch, seeds, salt=0)
        out = self._preprocess(batch)
        if self._after is not None:
            out = _per_face(self._after, out, seeds, salt=1)
        return out


def _per_face(op: v2.Compose, batch: torch.Tensor, seeds: Sequence[int] | None, salt: int) -> torch.Tensor:
    faces = []
    for i, face in enumerate(batch):
        if seeds is not None:
            # The salt gives each stage of a face its own stream (seeds are 64-bit hashes: no collisions).
            torch.default_generator.manual_seed((seeds[i] + salt) % 2**64)
        faces.append(op(face))
    return torch.stack(faces)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch ops on one thread: 48x48 faces are far too small to split, and with num_workers=0 on a
    busy 2-core machine the intra-op thread pool made the augmentation ~20x slower (100 vs 2400 faces/s).
    DataLoader workers are single-threaded already."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_train_transform(aug: AugmentConfig, pre: Preprocessing) -> FaceTransform:
    """Random augmentations on uint8 faces, Preprocessing, then random erasing; disabled ops are left out."""
    augment: list[v2.Transform] = []
    if aug.random_resized_crop is not None:
        # Crop back to the stored face size; Preprocessing then resizes to the model's input size.
        augment.append(v2.RandomResizedCrop(IMAGE_SIZE, scale=aug.random_resized_crop, antialias=True))
    if aug.hflip_p > 0:
        augment.append(v2.RandomHorizontalFlip(aug.hflip_p))
    # Rotation and the affine parameters share one warp: one interpolation, half the cost.
    if (
        aug.rotation_degrees > 0
        or aug.affine_translate > 0
        or aug.affine_scale is not None
        or aug.affine_shear > 0
    ):
        augment.append(
            v2.RandomAffine(
                degrees=aug.rotation_degrees,
                translate=(aug.affine_translate, aug.affine_translate) if aug.affine_translate > 0 else None,
                scale=aug.affine_scale,
                shear=aug.affine_shear if aug.affine_shear > 0 else None,
                interpolation=v2.InterpolationMode.BILINEAR,  # nearest leaves jagged edges on 48 px faces
            )
        )
    if aug.brightness > 0 or aug.contrast > 0:
        augment.append(v2.ColorJitter(brightness=aug.brightness or None, contrast=aug.contrast or None))
    after = [v2.RandomErasing(p=aug.erasing_p, scale=aug.erasing_scale, value=0)] if aug.erasing_p > 0 else []
    return FaceTransform(pre, augment, after)


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


def build_eval_transform(pre: Preprocessing) -> FaceTransform:
    """Deterministic: exactly Preprocessing."""
    return FaceTransform(pre)


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
        crops = F.ten_crop(batch, [round(TENCROP_FRACTION * size)] * 2)
        return torch.stack([F.resize(crop, [size, size], antialias=True) for crop in crops])
    raise ValueError(f"unknown TTA mode {mode!r}; expected one of {', '.join(TTA_MODES)}")
