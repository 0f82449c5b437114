"""Training augmentation, batched on the training device, with parameters drawn per face.

Two halves, so that the device does a fixed handful of batched kernels and nothing else:

- `AugmentSampler` (host; the DataLoader worker calls it for each batch it reads) draws every face's
  parameters from (run seed, epoch, row_id) alone, with a counter-based hash (SplitMix64) instead of a
  generator's state, and packs them into a small float32 table (one row per face). A face is
  therefore augmented the same way whatever batch, worker, process count or resume point it comes in,
  and a resumed run replays the augmentation of an uninterrupted one bit for bit.
- `BatchAugment` (device; the Trainer calls it on the batch after Accelerate moved it) turns uint8
  faces and their parameter rows into the model's normalized input: random resized crop, horizontal
  flip, rotation, translation, scale and shear as one affine map per face, applied by a single
  grid_sample over the batch (one interpolation); brightness and contrast as per-face multiply-adds;
  random erasing as a box mask on the normalized image. Every step is elementwise or per face, so a
  face's result does not depend on the other faces in its batch.

`augment_faces` runs both halves on a batch at hand. `augment_grid` draws what a configuration does to a
few faces over the epochs; `write_augment_grid` saves it as a PNG (the run's report, `emotionnet-summary
--augment-grid`).

Parameter ranges follow torchvision's v2 ops (RandomResizedCrop, RandomHorizontalFlip, RandomAffine,
ColorJitter, RandomErasing; fill 0; erased pixels become the normalization mean). Differences: the crop
and the erased box are drawn once, not retried up to 10 times (a crop that does not fit is the whole
face, an erased box that does not fit erases nothing: torchvision's outcomes when its tries run out),
crop boxes and translations are not rounded to whole pixels, brightness always comes before contrast,
and the warp runs at the model's input size after Preprocessing's resize (the same fractions of the
side).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from data_prep.files import atomic_file
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import AugmentConfig

AUGMENT_GRID_NAME = "augmentations.png"  # written into a run's reports/ at start
# A face's parameter row (float32): the affine map to sample from (grid_sample's [-1, 1] coordinates, 2 x 3,
# output -> input); brightness / 255; contrast / std and (1 - contrast) / std (the blend with the face's
# mean, folded into the normalization); then S column and S row indicators of the erased box.
_THETA, _BRIGHTNESS, _CONTRAST, _MEAN_WEIGHT, _ERASE = slice(0, 6), 6, 7, 8, 9
# One fixed stream per draw: turning one op off leaves the other ops' draws unchanged.
(_FLIP, _CROP_AREA, _CROP_RATIO, _CROP_X, _CROP_Y, _ANGLE, _SHIFT_X, _SHIFT_Y, _SCALE, _SHEAR,
 _BRIGHT, _CONTR, _ERASE_P, _ERASE_AREA, _ERASE_RATIO, _ERASE_X, _ERASE_Y) = range(17)  # fmt: skip
DRAWS = 17
_CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # torchvision's RandomResizedCrop default
_ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))  # torchvision's RandomErasing default
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def param_count(input_size: int) -> int:
    """Numbers per face in a parameter row."""
    return _ERASE + 2 * input_size


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 arrays (wrapping arithmetic): a bijection that avalanches."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, epoch: int, row_ids: np.ndarray, count: int = DRAWS) -> np.ndarray:
    """(B, count) float64 uniforms in [0, 1): column j is SplitMix64 stream (seed, epoch, row_id) at step j.

    Distinct rows get distinct keys (the mixer is a bijection), so no two faces of an epoch share draws.
    """
    digest = hashlib.blake2b(struct.pack("<qq", seed, epoch), digest_size=8).digest()
    salt = np.uint64(int.from_bytes(digest, "little"))
    keys = _splitmix64(np.asarray(row_ids).astype(np.uint64) ^ salt)
    bits = _splitmix64(keys[:, None] + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _each(fn: Callable[[float], float], values: np.ndarray) -> np.ndarray:
    """`fn` (from `math`) applied value by value: numpy's SIMD transcendentals may round differently at
    different positions of an array, and a face's parameters must not depend on its place in the batch."""
    return np.fromiter(map(fn, values.tolist()), np.float64, len(values))


@dataclass
class Draws:
    """Each face's random parameters, (B,) arrays; a disabled op holds its identity value."""

    flip: np.ndarray  # bool
    crop: np.ndarray  # (B, 4): x0, y0, width, height as fractions of the side
    angle: np.ndarray  # degrees
    shift: np.ndarray  # (B, 2): x, y as fractions of the side
    scale: np.ndarray
    shear: np.ndarray  # degrees, along x
    brightness: np.ndarray  # factors
    contrast: np.ndarray
    erase: np.ndarray  # (B, 4) int: x0, y0, width, height in input pixels; width 0 = nothing erased


class AugmentSampler:
    """Host side: (epoch, row ids) -> each face's parameter row, float32 (B, param_count(input_size)).

    A few dozen vectorized numpy operations per batch, whatever its size: it runs in the DataLoader
    worker, so only uint8 faces and this small table travel to the device.
    """

    def __init__(self, cfg: AugmentConfig, pre: Preprocessing, seed: int):
        self.cfg = cfg
        self.pre = pre
        self.seed = seed
        size = pre.input_size
        # Each draw's range, applied to all columns at once: lo + span * u (unlisted columns stay u).
        ranges = {
            _CROP_AREA: cfg.random_resized_crop or (1.0, 1.0),
            _CROP_RATIO: _CROP_LOG_RATIO,
            _ANGLE: (-cfg.rotation_degrees, cfg.rotation_degrees),
            _SHIFT_X: (-cfg.affine_translate, cfg.affine_translate),
            _SHIFT_Y: (-cfg.affine_translate, cfg.affine_translate),
            _SCALE: cfg.affine_scale or (1.0, 1.0),
            _SHEAR: (-cfg.affine_shear, cfg.affine_shear),
            _BRIGHT: (max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
            _CONTR: (max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
            _ERASE_AREA: tuple(v * size * size for v in cfg.erasing_scale),
            _ERASE_RATIO: _ERASE_LOG_RATIO,
        }
        self._lo, span = np.zeros(DRAWS), np.ones(DRAWS)
        for column, (lo, hi) in ranges.items():
            self._lo[column], span[column] = lo, hi - lo
        self._span = span

    def draws(self, epoch: int, row_ids: np.ndarray) -> Draws:
        cfg, size = self.cfg, self.pre.input_size
        v = self._lo + self._span * uniforms(self.seed, epoch, row_ids)
        n = len(v)
        crop = np.tile([0.0, 0.0, 1.0, 1.0], (n, 1))
        if cfg.random_resized_crop is not None:
            area, ratio = v[:, _CROP_AREA], _each(math.exp, v[:, _CROP_RATIO])
            width, height = np.sqrt(area * ratio), np.sqrt(area / ratio)
            fits = (width <= 1) & (height <= 1)  # else the whole face, torchvision's fallback
            width, height = np.where(fits, width, 1.0), np.where(fits, height, 1.0)
            crop = np.stack([v[:, _CROP_X] * (1 - width), v[:, _CROP_Y] * (1 - height), width, height], 1)
        erase = np.zeros((n, 4), dtype=np.int64)
        if cfg.erasing_p > 0:
            area, ratio = v[:, _ERASE_AREA], _each(math.exp, v[:, _ERASE_RATIO])
            height = np.clip(np.round(np.sqrt(area * ratio)), 1, size).astype(np.int64)
            width = np.clip(np.round(np.sqrt(area / ratio)), 1, size).astype(np.int64)
            y0 = np.minimum((v[:, _ERASE_Y] * (size - height + 1)).astype(np.int64), size - height)
            x0 = np.minimum((v[:, _ERASE_X] * (size - width + 1)).astype(np.int64), size - width)
            # A box as large as the face erases nothing, as when torchvision runs out of tries.
            erased = (v[:, _ERASE_P] < cfg.erasing_p) & (height < size) & (width < size)
            erase = np.stack([x0, y0, np.where(erased, width, 0), height], 1)
        return Draws(
            flip=v[:, _FLIP] < cfg.hflip_p,
            crop=crop,
            angle=v[:, _ANGLE],
            shift=v[:, [_SHIFT_X, _SHIFT_Y]],
            scale=v[:, _SCALE],
            shear=v[:, _SHEAR],
            brightness=v[:, _BRIGHT],
            contrast=v[:, _CONTR],
            erase=erase,
        )

    def __call__(self, epoch: int, row_ids: np.ndarray) -> np.ndarray:
        return parameter_rows(self.draws(epoch, row_ids), self.pre)


def parameter_rows(d: Draws, pre: Preprocessing) -> np.ndarray:
    """Draws -> float32 parameter rows (B, param_count(pre.input_size)) for BatchAugment.

    The forward map of a face is crop-and-resize, then flip, then the affine about the centre; the rows
    hold its inverse (output -> input), which is what grid_sample needs. Coordinates are fractions of the
    side until the last step, which converts to grid_sample's [-1, 1] (align_corners=False).
    """
    size = pre.input_size
    angle = np.radians(d.angle)
    cos, sin, tan = _each(math.cos, angle), _each(math.sin, angle), _each(math.tan, np.radians(d.shear))
    # Inverse affine: (1/s) Shear^-1 R(-angle), with Shear = [[1, -tan], [0, 1]] as in torchvision.
    a, b = (cos - tan * sin) / d.scale, (sin + tan * cos) / d.scale
    c, e = -sin / d.scale, cos / d.scale
    tx, ty = 0.5 + d.shift[:, 0], 0.5 + d.shift[:, 1]  # where the centre goes
    ex, ey = 0.5 - a * tx - b * ty, 0.5 - c * tx - e * ty  # x_flipped = a x + b y + ex, and so on
    sign = np.where(d.flip, -1.0, 1.0)  # undo the flip: x_crop = 1 - x_flipped
    a, b, ex = sign * a, sign * b, np.where(d.flip, 1 - ex, ex)
    x0, y0, w, h = d.crop.T  # undo the crop: x_in = x0 + w x_crop
    rows = np.empty((len(angle), param_count(size)))
    rows[:, _THETA] = np.stack(
        [2 * w * a, 2 * w * b, 2 * (x0 + w * ex) - 1, 2 * h * c, 2 * h * e, 2 * (y0 + h * ey) - 1], 1
    )
    rows[:, _BRIGHTNESS] = d.brightness / 255
    rows[:, _CONTRAST] = d.contrast / pre.std
    rows[:, _MEAN_WEIGHT] = (1 - d.contrast) / pre.std
    ex0, ey0, ew, eh = (col[:, None] for col in d.erase.T)
    idx = np.arange(size)
    rows[:, _ERASE : _ERASE + size] = (idx >= ex0) & (idx < ex0 + ew)
    rows[:, _ERASE + size :] = (idx >= ey0) & (idx < ey0 + eh)
    return rows.astype(np.float32)


class BatchAugment:
    """Device side: uint8 faces (B, 1, H, W) and their parameter rows -> normalized float32 (B, 1, S, S).

    Without rows (augmentation off, or an evaluation batch) it is exactly `Preprocessing`. Ops the config
    turns off are skipped. Brightness scales the face before the warp (bilinear interpolation commutes
    with it), in the same multiply that turns uint8 into [0, 1] floats; contrast and normalization are
    one multiply-add and a clamp to the normalized image of [0, 1].
    """

    def __init__(self, cfg: AugmentConfig, pre: Preprocessing):
        self.pre = pre
        self.geometric = (
            cfg.random_resized_crop is not None
            or cfg.hflip_p > 0
            or cfg.rotation_degrees > 0
            or cfg.affine_translate > 0
            or cfg.affine_scale is not None
            or cfg.affine_shear > 0
        )
        self.brightness = cfg.brightness > 0
        self.contrast = cfg.contrast > 0
        self.erasing = cfg.erasing_p > 0
        self._coords: dict[torch.device, torch.Tensor] = {}

    @property
    def enabled(self) -> bool:
        return self.geometric or self.brightness or self.contrast or self.erasing

    def __call__(self, faces: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
        if params is None or not self.enabled:
            return self.pre(faces)
        pre, size, n = self.pre, self.pre.input_size, len(faces)
        x = pre.resize(faces).to(torch.float32).mul_(params[:, _BRIGHTNESS].view(n, 1, 1, 1))
        if self.brightness:
            x = x.clamp_(max=1.0)
        if self.geometric:
            x = F.grid_sample(x, self._grid(params), mode="bilinear", align_corners=False)
        if self.contrast:
            # (c x + (1 - c) mean - m) / s, clamped to the normalized [0, 1]: adjust_contrast, then normalize.
            shift = (x.mean(dim=(1, 2, 3)) * params[:, _MEAN_WEIGHT] - pre.mean / pre.std).view(n, 1, 1, 1)
            x = torch.addcmul(shift, x, params[:, _CONTRAST].view(n, 1, 1, 1))
            x = x.clamp_(-pre.mean / pre.std, (1 - pre.mean) / pre.std)
        else:
            x = pre.normalize(x)
        if self.erasing:
            cols = params[:, _ERASE : _ERASE + size].view(n, 1, 1, size)
            rows = params[:, _ERASE + size :].view(n, 1, size, 1)
            x = torch.addcmul(x, x * cols, rows, value=-1.0)  # x - x = 0 (the mean) inside the box
        return x

    def _grid(self, params: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 2) sampling grid: the x terms (B, 1, S, 2) plus the y terms (B, S, 1, 2), so the only
        full-size op is one add. Elementwise on purpose: a batched matmul (as in F.affine_grid) may round
        differently with the batch size."""
        device = params.device
        if device not in self._coords:  # pixel centres as fractions of the side
            size = self.pre.input_size
            self._coords[device] = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
        c = self._coords[device]
        theta = params[:, _THETA].view(-1, 2, 3)
        along_x = c[None, None, :, None] * theta[:, None, None, :, 0] + theta[:, None, None, :, 2]
        return along_x + c[None, :, None, None] * theta[:, None, None, :, 1]


def augment_faces(
    cfg: AugmentConfig, pre: Preprocessing, seed: int, faces: torch.Tensor, row_ids: np.ndarray, epoch: int
) -> torch.Tensor:
    """Both halves in one call, for a batch at hand (benchmarks, the augmentation grid, tests)."""
    rows = torch.from_numpy(AugmentSampler(cfg, pre, seed)(epoch, row_ids)).to(faces.device)
    return BatchAugment(cfg, pre)(faces, rows)


def augment_grid(
    cfg: AugmentConfig, pre: Preprocessing, seed: int, faces: torch.Tensor, row_ids: np.ndarray,
    epochs: int = 7, zoom: int = 2,
) -> torch.Tensor:  # fmt: skip
    """uint8 (3, H, W) image: one row per face, its preprocessed original, then what training feeds the
    model for it in epochs 0, 1, ..., denormalized and enlarged `zoom` times."""
    views = [pre(faces)] + [augment_faces(cfg, pre, seed, faces, row_ids, e) for e in range(epochs)]
    tiles = torch.stack(views, dim=1).flatten(0, 1)  # face-major: each face's views side by side
    tiles = (tiles * pre.std + pre.mean).clamp(0, 1)
    tiles = tiles.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)
    grid = make_grid(tiles.cpu(), nrow=epochs + 1, padding=2, pad_value=1.0)
    return (grid * 255).round().to(torch.uint8)


def write_augment_grid(
    path: str | Path, cfg: AugmentConfig, pre: Preprocessing, seed: int, split, faces: int = 8
) -> Path:
    """The grid of `augment_grid` for the first `faces` rows of a prepared split, as a PNG at `path`."""
    rows = split.with_format("numpy", columns=["image", "row_id"])[:faces]
    images = torch.from_numpy(np.asarray(rows["image"], dtype=np.uint8))[:, None]
    return write_png(augment_grid(cfg, pre, seed, images, np.asarray(rows["row_id"])), path)


def write_png(image: torch.Tensor, path: str | Path) -> Path:
    """A uint8 (C, H, W) image as a PNG, written atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return path
