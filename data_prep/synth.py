"""`emotionnet-synth OUT_CSV`: a synthetic FER2013-format CSV of drawn 48x48 faces, for demos and tests.

Class signal: every face is an ellipse with eyes, brows, a nose and a mouth. The class sets the mean of
seven expression features; each face draws its own value of each around that mean (a Gaussian per
feature), so single features overlap between classes and a few faces sit between two of them:

  class     brows                         eyes          mouth
  angry     V: inner ends pulled down     narrowed      closed, flat
  disgust   slight V                      squinted      lopsided sneer: one corner raised, slightly open
  fear      inner ends raised, lifted     wide open     wide, slightly open, corners a little down
  happy     level                         a bit narrow  wide smile: corners up
  sad       inner ends raised             normal        closed, corners down
  surprise  level, raised high            widest        small, round and wide open
  neutral   level                         normal        closed, straight

Nuisance, drawn independently of the class: head position, size and in-plane rotation (standard deviation
11 degrees), face shape, eye spacing and height, mouth height, brow thickness, a dark fringe of hair on half
of the faces, background / skin / feature tones, a lighting gradient in a random direction, and pixel
noise. Labels are drawn uniformly per row, independent of the row's position and split, and each class's
mean brightness lies within a quarter of a standard deviation (over faces) of the overall mean.

A linear classifier on the pixels gets about half of the faces right (chance: 1/7); the demo's EmotionNet
(`make demo`, 5 epochs on 2400 faces) about 95 %. Rows: the first 80 % Training, then 10 % PublicTest
and 10 % PrivateTest, like the original file. Output is a function of (rows, seed) only; it is generated
and written in chunks.
"""

from __future__ import annotations

import gzip
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep.files import atomic_file
from data_prep.schema import IMAGE_SIZE, NUM_CLASSES, NUM_PIXELS

_CHUNK_ROWS = 1024  # part of the output's definition: chunk c is drawn from the generator seeded (seed, c)


@dataclass(frozen=True)
class _Expression:
    """Class-specific face geometry in face coordinates (face half-width ~0.7; v grows downwards)."""

    brow_tilt: float  # > 0: inner ends lower (a V, frowning); < 0: inner ends raised (worry)
    brow_raise: float  # > 0: brows higher
    eye_open: float  # eye height multiplier
    mouth_curve: float  # > 0: corners up (smile); < 0: corners down
    mouth_open: float  # height of the open mouth
    mouth_width: float
    mouth_skew: float  # one corner higher than the other


# angry, disgust, fear, happy, sad, surprise, neutral (schema.CLASS_NAMES order)
_EXPRESSIONS = (
    _Expression(0.45, -0.04, 0.70, -0.03, 0.00, 0.30, 0.00),
    _Expression(0.20, -0.02, 0.45, -0.05, 0.05, 0.28, 0.15),
    _Expression(-0.40, 0.07, 1.50, -0.06, 0.10, 0.38, 0.00),
    _Expression(0.00, 0.00, 0.80, 0.18, 0.04, 0.40, 0.00),
    _Expression(-0.40, 0.00, 0.90, -0.16, 0.00, 0.30, 0.00),
    _Expression(0.00, 0.12, 1.60, 0.00, 0.22, 0.18, 0.00),
    _Expression(0.00, 0.00, 1.00, 0.00, 0.00, 0.32, 0.00),
)
_MEANS = np.array([[getattr(e, f) for f in _Expression.__dataclass_fields__] for e in _EXPRESSIONS])
# Per-face jitter of each field above: every pair of classes differs by >= 3 jitters in some feature, yet
# single features overlap between neighbouring classes.
_JITTER = np.array([0.08, 0.03, 0.14, 0.035, 0.025, 0.04, 0.04])


def _soft(signed: np.ndarray, sharpness: float = 12.0) -> np.ndarray:
    """Anti-aliased inside-ness (0..1) from a signed distance-like value (> 0 inside)."""
    return 0.5 + 0.5 * np.tanh(0.5 * sharpness * signed)  # the logistic function, without exp overflow


def render_faces(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 48, 48) uint8 faces for the given class labels."""
    n = len(labels)
    p = [
        col[:, None, None]
        for col in (_MEANS[labels] + rng.normal(size=(n, len(_JITTER))) * _JITTER).T.astype(np.float32)
    ]
    brow_tilt, brow_raise, eye_open, mouth_curve, mouth_open, mouth_width, mouth_skew = p

    def draw(*shape_params) -> list[np.ndarray]:
        return [x.astype(np.float32)[:, None, None] for x in shape_params]  # float32: half the memory traffic

    shift_x, shift_y, scale, angle = draw(
        rng.normal(0, 0.08, n), rng.normal(0, 0.08, n), rng.uniform(0.8, 1.15, n), rng.normal(0, 0.2, n)
    )
    face_w, face_h, eye_dx, eye_y, mouth_y, brow_half, hair_v = draw(
        rng.uniform(0.62, 0.76, n), rng.uniform(0.82, 0.95, n), rng.uniform(0.26, 0.36, n),
        rng.uniform(-0.24, -0.14, n), rng.uniform(0.38, 0.5, n), rng.uniform(0.025, 0.045, n),
        np.where(rng.random(n) < 0.5, rng.uniform(-0.8, -0.62, n), -2.0),  # -2: no hair
    )  # fmt: skip
    background, skin, feature, light, light_dir, noise = draw(
        rng.uniform(20, 140, n), rng.uniform(120, 215, n), rng.uniform(10, 70, n),
        rng.uniform(0, 70, n), rng.uniform(0, 2 * np.pi, n), rng.uniform(3, 14, n),
    )  # fmt: skip

    axis = np.linspace(-1, 1, IMAGE_SIZE, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    # Pixel -> face coordinates (inverse of the random pose).
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * (x - shift_x) + sin * (y - shift_y)) / scale
    v = (-sin * (x - shift_x) + cos * (y - shift_y)) / scale
    abs_u = np.abs(u)

    face = _soft(1 - (u / face_w) ** 2 - (v / face_h) ** 2, 6)
    eyes = _soft(
        1 - ((abs_u - eye_dx) / 0.12) ** 2 - ((v - eye_y) / (0.06 * np.clip(eye_open, 0.2, None))) ** 2, 4
    )
    brow_v = eye_y - 0.16 - brow_raise + brow_tilt * (eye_dx + 0.12 - abs_u)
    brows = _soft(brow_half - np.abs(v - brow_v), 60) * _soft(0.16 - np.abs(abs_u - eye_dx), 40)
    mouth_v = mouth_y + mouth_curve * (1 - (u / mouth_width) ** 2) + mouth_skew * u
    half_height = 0.03 + np.clip(mouth_open, 0, None) * np.clip(1 - (u / mouth_width) ** 2, 0, None)
    mouth = _soft(half_height - np.abs(v - mouth_v), 60) * _soft(mouth_width - abs_u, 40)
    nose = _soft(0.02 - np.abs(u), 60) * _soft(0.12 - np.abs(v - 0.12), 40) * 0.4
    # A fringe: the head's top above the hairline, a little beyond the face's outline.
    hair = _soft(hair_v - v, 30) * _soft(1 - (u / (1.12 * face_w)) ** 2 - (v / (1.1 * face_h)) ** 2, 12)

    parts = np.maximum.reduce([eyes, brows, mouth, nose]) * face
    image = background + (skin - background) * face - (skin - feature) * parts
    image = image + (feature - image) * 0.9 * hair
    image = (
        image
        + light * (np.cos(light_dir) * x + np.sin(light_dir) * y)
        + rng.standard_normal(size=u.shape, dtype=np.float32) * noise
    )
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def usage_counts(rows: int) -> tuple[int, int, int]:
    """Training / PublicTest / PrivateTest row counts: 80/10/10, each present once there are 3 rows."""
    if rows < 3:
        return rows - (rows == 2), int(rows == 2), 0
    held_out = max(1, round(rows * 0.1))
    return rows - 2 * held_out, held_out, held_out


def _pixel_text(images: np.ndarray) -> list[bytes]:
    """Each image as b"v v v ...": plain decimal, single spaces, built for the whole chunk at once."""
    values = images.reshape(len(images), NUM_PIXELS)
    chars = np.empty(values.shape + (4,), dtype=np.uint8)
    chars[..., 0] = 48 + values // 100
    chars[..., 1] = 48 + values // 10 % 10
    chars[..., 2] = 48 + values % 10
    chars[..., 3] = ord(" ")
    keep = np.ones(chars.shape, dtype=bool)
    keep[..., 0] = values >= 100
    keep[..., 1] = values >= 10
    keep[:, -1, 3] = False  # no space after the last value
    text = chars[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=(1, 2)))
    return [text[start:end] for start, end in zip(np.r_[0, ends[:-1]], ends, strict=True)]


def write_synthetic_csv(path: str | Path, rows: int, seed: int = 0, progress: bool = False) -> Path:
    """Write `rows` synthetic faces to a FER2013-format CSV (gzip if the name ends in .gz); atomic."""
    path = Path(path)
    train, public, _ = usage_counts(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as raw:
        # mtime=0 and no file name in the header: the same (rows, seed) gives the same bytes. Level 1:
        # noisy pixels barely compress further, and level 9 is 10x slower.
        out = (
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=1)
            if path.suffix == ".gz"
            else raw
        )
        out.write(b"emotion,pixels,Usage\n")
        with tqdm(
            total=rows, unit="row", desc=f"synth {path.name}", file=sys.stderr, disable=not progress
        ) as bar:
            for chunk, start in enumerate(range(0, rows, _CHUNK_ROWS)):
                rng = np.random.default_rng([seed, chunk])
                index = np.arange(start, min(rows, start + _CHUNK_ROWS))
                labels = rng.integers(0, NUM_CLASSES, len(index))
                usages = np.where(
                    index < train,
                    "Training",
                    np.where(index < train + public, "PublicTest", "PrivateTest"),
                )
                pixels = _pixel_text(render_faces(labels, rng))
                out.write(b"".join(b"%d,%s,%s\n" % (label, px, usage.encode()) for label, px, usage in zip(labels, pixels, usages, strict=True)))  # fmt: skip
                bar.update(len(index))
        if out is not raw:
            out.close()
    return path
