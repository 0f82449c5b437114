"""Batched per-face augmentation (data/augment.py): identity, agreement with torchvision's per-face ops,
statistics over many faces, independence from the batch, the augmentation grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from data_prep.schema import IMAGE_SIZE
from emotionnet.cli.summary import main as summary_main
from emotionnet.data.augment import (
    AugmentSampler,
    BatchAugment,
    augment_faces,
    augment_grid,
    param_count,
    uniforms,
    write_png,
)
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import AugmentConfig

ALL_OFF = AugmentConfig(
    hflip_p=0.0,
    rotation_degrees=0.0,
    brightness=0.0,
    contrast=0.0,
    affine_translate=0.0,
    affine_scale=None,
    affine_shear=0.0,
    erasing_p=0.0,
    random_resized_crop=None,
)
PRE = Preprocessing()
BILINEAR = TF.InterpolationMode.BILINEAR


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 faces (1, 48, 48) with a horizontal ramp, so flips and warps change pixels."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 120, (n, 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator, dtype=torch.uint8)
    ramp = torch.linspace(0, 120, IMAGE_SIZE).round().to(torch.uint8)
    return TF.gaussian_blur(noise + ramp, [5, 5], [1.5, 1.5])


def _only(**fields) -> AugmentConfig:
    return dataclasses.replace(ALL_OFF, **fields)


def _augment(cfg: AugmentConfig, faces: torch.Tensor, rows: np.ndarray, epoch: int = 0, seed: int = 0):
    return augment_faces(cfg, PRE, seed, faces, rows, epoch)


# --- identity --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [48, 64])
def test_everything_off_is_exactly_preprocessing(size):
    pre = Preprocessing(input_size=size)
    faces = _faces(6)
    assert not BatchAugment(ALL_OFF, pre).enabled
    assert torch.equal(augment_faces(ALL_OFF, pre, 0, faces, np.arange(6), 0), pre(faces))
    assert torch.equal(BatchAugment(AugmentConfig(), pre)(faces, None), pre(faces))  # evaluation batches


def test_ops_drawing_only_their_identity_change_nothing():
    """The warp and erasing paths run, but draw a crop of the whole face, scale 1 and a box too large to
    erase: the result is Preprocessing up to float rounding."""
    cfg = _only(
        affine_scale=(1.0, 1.0), random_resized_crop=(1.0, 1.0), erasing_p=1.0, erasing_scale=(1.0, 1.0)
    )
    augment = BatchAugment(cfg, PRE)
    assert augment.geometric and augment.erasing
    faces = _faces(16)
    assert torch.allclose(_augment(cfg, faces, np.arange(16)), PRE(faces), atol=1e-5)


# --- agreement with torchvision's per-face ops ------------------------------------------------------------


def _per_face_reference(cfg: AugmentConfig, faces: torch.Tensor, rows: np.ndarray, op) -> torch.Tensor:
    draws = AugmentSampler(cfg, PRE, 0).draws(0, rows)
    return torch.cat([PRE.normalize(op(PRE.scale(faces[i : i + 1]), draws, i)) for i in range(len(faces))])


def test_flip_and_affine_match_torchvision_per_face():
    cfg = _only(
        hflip_p=0.5, rotation_degrees=25.0, affine_translate=0.15, affine_scale=(0.8, 1.2), affine_shear=12.0
    )
    faces, rows = _faces(12), np.arange(12) + 100

    def reference(x, d, i):
        x = TF.horizontal_flip(x) if d.flip[i] else x
        shift = [float(d.shift[i, 0]) * IMAGE_SIZE, float(d.shift[i, 1]) * IMAGE_SIZE]
        return TF.affine(x, angle=float(d.angle[i]), translate=shift, scale=float(d.scale[i]),
                         shear=[float(d.shear[i]), 0.0], interpolation=BILINEAR)  # fmt: skip

    expected = _per_face_reference(cfg, faces, rows, reference)
    assert torch.allclose(_augment(cfg, faces, rows), expected, atol=1e-4)


def test_brightness_contrast_and_erasing_match_torchvision_per_face():
    cfg = _only(brightness=0.5, contrast=0.5, erasing_p=0.5)
    faces, rows = _faces(12), np.arange(12)

    def reference(x, d, i):
        x = TF.adjust_contrast(TF.adjust_brightness(x, float(d.brightness[i])), float(d.contrast[i]))
        x0, y0, w, h = d.erase[i]
        return TF.erase(x, int(y0), int(x0), int(h), int(w), torch.tensor(PRE.mean)) if w else x

    assert torch.allclose(
        _augment(cfg, faces, rows), _per_face_reference(cfg, faces, rows, reference), atol=1e-5
    )


def test_random_resized_crop_takes_the_drawn_box():
    cfg = _only(random_resized_crop=(0.3, 0.6))
    faces, rows = _faces(8), np.arange(8)
    draws = AugmentSampler(cfg, PRE, 0).draws(0, rows)
    area = draws.crop[:, 2] * draws.crop[:, 3]
    assert ((area > 0.3 - 1e-9) & (area < 0.6 + 1e-9)).all()
    assert (draws.crop[:, :2] >= 0).all() and (draws.crop[:, :2] + draws.crop[:, 2:] <= 1 + 1e-9).all()
    out = _augment(cfg, faces, rows)
    # Compare away from the box edges, where torchvision's whole-pixel crop and ours agree closely.
    for i in range(8):
        x0, y0, w, h = (draws.crop[i] * IMAGE_SIZE).tolist()
        crop = TF.resized_crop(PRE.scale(faces[i : i + 1]), round(y0), round(x0), round(h), round(w),
                               [IMAGE_SIZE, IMAGE_SIZE], antialias=False)  # fmt: skip
        assert (out[i] - PRE.normalize(crop)[0]).abs()[..., 8:-8, 8:-8].mean() < 0.1


@pytest.mark.parametrize(
    "only",
    [{"hflip_p": 1.0}, {"rotation_degrees": 30.0}, {"brightness": 0.6}, {"contrast": 0.6},
     {"affine_translate": 0.3}, {"affine_scale": (0.5, 0.7)}, {"affine_shear": 30.0}, {"erasing_p": 1.0},
     {"random_resized_crop": (0.2, 0.4)}],
    ids=lambda only: next(iter(only)),
)  # fmt: skip
def test_each_augmentation_alone_takes_effect(only):
    faces = _faces(8)
    out = _augment(_only(**only), faces, np.arange(8))
    assert out.shape == (8, 1, IMAGE_SIZE, IMAGE_SIZE) and out.dtype == torch.float32
    changed = (out - PRE(faces)).abs().flatten(1).amax(1) > 1e-3
    assert changed.sum() >= 6  # a random draw can land next to the identity for a face or two
    if "hflip_p" in only:
        assert torch.allclose(out, PRE(faces).flip(-1), atol=1e-5)


# --- statistics over many faces ---------------------------------------------------------------------------


def test_uniforms_are_uniform_and_distinct_per_row():
    u = uniforms(seed=0, epoch=0, row_ids=np.arange(20_000))
    assert u.shape == (20_000, 17) and (u >= 0).all() and (u < 1).all()
    counts = np.stack([np.histogram(u[:, j], bins=10, range=(0, 1))[0] for j in range(17)])
    assert (np.abs(counts - 2000) < 200).all()  # ~4.5 standard deviations
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    assert len({tuple(row) for row in u[:, :2]}) == 20_000


def test_flip_rate_over_many_faces():
    rows = np.arange(4000)
    flips = AugmentSampler(_only(hflip_p=0.3), PRE, 0).draws(0, rows).flip
    assert abs(flips.mean() - 0.3) < 0.03
    faces = _faces(1).expand(400, -1, -1, -1)
    out = _augment(_only(hflip_p=0.3), faces, rows[:400])
    flipped = (out - PRE(faces).flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert torch.equal(flipped, torch.from_numpy(flips[:400]))  # each face is exactly one or the other


def test_angle_shift_scale_shear_stay_in_their_ranges_and_fill_them():
    cfg = _only(rotation_degrees=15.0, affine_translate=0.1, affine_scale=(0.9, 1.1), affine_shear=5.0)
    d = AugmentSampler(cfg, PRE, 7).draws(3, np.arange(5000))
    for values, lo, hi in ((d.angle, -15, 15), (d.shift, -0.1, 0.1), (d.scale, 0.9, 1.1), (d.shear, -5, 5)):
        span = hi - lo
        assert values.min() >= lo and values.max() <= hi
        assert values.min() < lo + 0.01 * span and values.max() > hi - 0.01 * span
        assert abs(values.mean() - (lo + hi) / 2) < 0.02 * span


def test_erasing_rate_and_erased_area_over_many_faces():
    cfg = _only(erasing_p=0.25, erasing_scale=(0.02, 0.15))
    n = 2000
    out = _augment(cfg, _faces(1).expand(n, -1, -1, -1), np.arange(n))
    # Normalized pixels are never exactly 0 (that is grey 127.5), so zeros are exactly the erased ones.
    erased = (out == 0).flatten(1).float().mean(1)
    rate = (erased > 0).float().mean()
    assert abs(rate - 0.25) < 0.03
    area = erased[erased > 0]
    # The box's sides are rounded to whole pixels: its area can leave the range by a side's rounding.
    assert area.min() >= 0.02 * 0.75 and area.max() <= 0.15 * 1.25
    assert abs(area.mean() - (0.02 + 0.15) / 2) < 0.01


# --- independence from batch, worker, process, device -----------------------------------------------------


def test_a_face_is_augmented_the_same_in_any_batch():
    cfg = AugmentConfig(random_resized_crop=(0.5, 1.0), erasing_p=0.5)
    faces, rows = _faces(32), np.arange(32) * 3 + 2
    together = _augment(cfg, faces, rows, epoch=4, seed=9)
    order = np.random.default_rng(0).permutation(32)
    shuffled = _augment(cfg, faces[order], rows[order], epoch=4, seed=9)
    alone = torch.cat([_augment(cfg, faces[i : i + 1], rows[i : i + 1], epoch=4, seed=9) for i in range(32)])
    assert torch.equal(shuffled, together[order])  # bitwise
    assert torch.equal(alone, together)
    assert not torch.equal(_augment(cfg, faces, rows, epoch=5, seed=9), together)
    assert not torch.equal(_augment(cfg, faces, rows, epoch=4, seed=10), together)
    assert not torch.equal(_augment(cfg, faces, rows + 1, epoch=4, seed=9), together)


def test_augmentation_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _augment(AugmentConfig(), _faces(8), np.arange(8))
    assert torch.equal(torch.get_rng_state(), before)


def test_parameter_rows_have_the_documented_width():
    rows = AugmentSampler(AugmentConfig(), Preprocessing(input_size=64), 0)(0, np.arange(5))
    assert rows.shape == (5, param_count(64)) and rows.dtype == np.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    faces, rows = _faces(16), np.arange(16)
    cpu = _augment(AugmentConfig(), faces, rows)
    assert torch.allclose(_augment(AugmentConfig(), faces.cuda(), rows).cpu(), cpu, atol=1e-4)


# --- the augmentation grid --------------------------------------------------------------------------------


def test_augment_grid_shows_each_face_then_its_augmentations(tmp_path):
    grid = augment_grid(AugmentConfig(), PRE, 0, _faces(3), np.arange(3), epochs=4, zoom=2)
    tile = 2 * IMAGE_SIZE + 2  # enlarged face plus padding
    assert grid.shape == (3, 3 * tile + 2, 5 * tile + 2) and grid.dtype == torch.uint8
    original = ((PRE(_faces(3))[0, 0] * PRE.std + PRE.mean).clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(grid[0, 2 : 2 + 2 * IMAGE_SIZE : 2, 2 : 2 + 2 * IMAGE_SIZE : 2], original)
    path = write_png(grid, tmp_path / "reports" / "grid.png")
    assert torch.equal(torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1), grid)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left


def test_summary_cli_writes_the_grid_for_a_recipe(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert summary_main(["--augment-grid", str(out), "augment.rotation_degrees=30"]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert summary_main(["--augment-grid", str(out), "--data-dir", str(tmp_path / "nope")]) == 2
    assert "no such dataset directory" in capsys.readouterr().err
