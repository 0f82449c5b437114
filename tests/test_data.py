"""Input pipeline: transforms, TTA views, prepared-split loading, FaceDataset and its DataLoader."""

from __future__ import annotations

import dataclasses
import json

import datasets
import numpy as np
import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from torchvision.transforms.v2 import functional as F

from data_prep.schema import IMAGE_SIZE, MANIFEST_NAME, NUM_CLASSES, SCHEMA_VERSION, features
from emotionnet.data.loaders import (
    DataConfig,
    DatasetNotPreparedError,
    FaceDataset,
    class_counts,
    create_loader,
    load_splits,
)
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import AugmentConfig, build_eval_transform, build_train_transform, tta_views

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
SPLIT_SIZES = {"train": 48, "validation": 20, "test": 12}


def _faces(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random faces with an asymmetric gradient, so flips, warps and jitter all change pixels."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 120, IMAGE_SIZE)[None, None, :]
    noise = rng.integers(0, 120, (n, IMAGE_SIZE, IMAGE_SIZE))
    return (ramp + noise + rng.integers(0, 15, (n, 1, 1))).clip(0, 255).astype(np.uint8)


def _split(n: int, seed: int, first_row: int) -> datasets.Dataset:
    labels = np.arange(n) % NUM_CLASSES
    row_ids = np.arange(first_row, first_row + n)
    return datasets.Dataset.from_dict(
        {"image": _faces(n, seed), "label": labels, "row_id": row_ids}, features=features()
    )


def _write_prepared(path, splits: datasets.DatasetDict, schema_version: int = SCHEMA_VERSION):
    splits.save_to_disk(str(path))
    (path / MANIFEST_NAME).write_text(json.dumps({"schema_version": schema_version}))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    first = 2  # row_id is the CSV line number; the header is line 1
    splits = {}
    for seed, (name, n) in enumerate(SPLIT_SIZES.items()):
        splits[name] = _split(n, seed, first)
        first += n
    return _write_prepared(tmp_path_factory.mktemp("prepared"), datasets.DatasetDict(splits))


@pytest.fixture(scope="module")
def splits(data_dir):
    return load_splits(data_dir)


def _images(n: int = 6) -> torch.Tensor:
    return torch.from_numpy(_faces(n, seed=7)).unsqueeze(1)


# --- transforms -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [48, 64])
def test_eval_transform_is_preprocessing(size):
    pre = Preprocessing(input_size=size)
    transform = build_eval_transform(pre)
    images = _images()
    out = transform(images)
    assert transform.deterministic
    assert out.shape == (6, 1, size, size) and out.dtype == torch.float32
    assert torch.equal(out, pre(images))
    assert torch.equal(out, transform(images))
    assert torch.equal(transform(images[2]), out[2])
    lo, hi = (0 - pre.mean) / pre.std, (1 - pre.mean) / pre.std
    assert lo - 1e-6 <= out.min() and out.max() <= hi + 1e-6


def test_transform_rejects_float_input():
    with pytest.raises(TypeError, match="uint8"):
        build_eval_transform(Preprocessing())(_images().float())


@pytest.mark.parametrize("size", [48, 64])
def test_train_transform_changes_faces_and_keeps_shape(size):
    pre = Preprocessing(input_size=size)
    images = _images(16)
    out = build_train_transform(AugmentConfig(), pre)(images)
    assert out.shape == (16, 1, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    changed = (out - pre(images)).abs().flatten(1).amax(1) > 1e-3
    assert changed.sum() >= 14  # a face can come out untouched only if every random op draws ~identity


def test_all_augmentations_off_is_the_eval_transform():
    pre = Preprocessing()
    transform = build_train_transform(ALL_OFF, pre)
    assert transform.deterministic
    assert torch.equal(transform(_images()), build_eval_transform(pre)(_images()))


@pytest.mark.parametrize(
    "only",
    [
        {"hflip_p": 1.0},
        {"rotation_degrees": 30.0},
        {"brightness": 0.6},
        {"contrast": 0.6},
        {"affine_translate": 0.3},
        {"affine_scale": (0.5, 0.7)},
        {"affine_shear": 30.0},
        {"erasing_p": 1.0},
        {"random_resized_crop": (0.2, 0.4)},
    ],
    ids=lambda only: next(iter(only)),
)
def test_each_augmentation_alone_takes_effect(only):
    pre = Preprocessing()
    transform = build_train_transform(dataclasses.replace(ALL_OFF, **only), pre)
    images = _images(8)
    out = transform(images, seeds=list(range(8)))
    assert not transform.deterministic
    assert out.shape == (8, 1, IMAGE_SIZE, IMAGE_SIZE)
    changed = (out - pre(images)).abs().flatten(1).amax(1) > 1e-3
    assert changed.sum() >= 6  # a random draw can land next to the identity for a face or two
    if "hflip_p" in only:
        assert torch.equal(out, pre(F.horizontal_flip(images)))


def test_seeded_augmentation_is_reproducible_and_leaves_global_rng_alone():
    transform = build_train_transform(AugmentConfig(erasing_p=0.5), Preprocessing())
    images = _images(8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = transform(images, seeds=list(range(8)))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, transform(images, seeds=list(range(8))))
    # Per-face seeds: a face's result does not depend on its batch neighbours.
    assert torch.equal(first[3], transform(images[3:4], seeds=[3])[0])
    assert not torch.equal(first, transform(images, seeds=list(range(100, 108))))


def test_augment_config_validation_and_yaml_lists():
    assert AugmentConfig(affine_scale=[0.8, 1.2]).affine_scale == (0.8, 1.2)
    with pytest.raises(ValueError, match="hflip_p"):
        AugmentConfig(hflip_p=1.5)
    with pytest.raises(ValueError, match="rotation_degrees"):
        AugmentConfig(rotation_degrees=-5)
    with pytest.raises(ValueError, match="erasing_scale"):
        AugmentConfig(erasing_scale=(0.5, 0.1))


# --- test-time augmentation -------------------------------------------------------------------------------


def test_tta_views():
    pre = Preprocessing(input_size=48)
    batch = pre(_images(4))
    assert torch.equal(tta_views(batch, "none", pre), batch[None])
    flip = tta_views(batch, "flip", pre)
    assert flip.shape == (2, 4, 1, 48, 48)
    assert torch.equal(flip[0], batch) and torch.equal(flip[1], batch.flip(-1))
    ten = tta_views(batch, "tencrop", pre)
    assert ten.shape == (10, 4, 1, 48, 48)
    # torchvision's order: four corners, centre, then the same five of the flipped batch.
    centre = F.resize(F.center_crop(batch, [42, 42]), [48, 48], antialias=True)
    assert torch.allclose(ten[4], centre) and torch.allclose(ten[9], centre.flip(-1), atol=1e-6)
    assert not torch.allclose(ten[0], ten[4])
    with pytest.raises(ValueError, match="unknown TTA mode"):
        tta_views(batch, "rotate", pre)
    with pytest.raises(ValueError, match="preprocessed batch"):
        tta_views(batch[:, :, :40, :40], "flip", pre)


# --- loading prepared splits ------------------------------------------------------------------------------


def test_load_splits_memory_maps_the_prepared_dataset(splits):
    assert {name: len(split) for name, split in splits.items()} == SPLIT_SIZES
    assert splits["train"].features == features()
    assert all(split.cache_files for split in splits.values())  # backed by Arrow files, not RAM


def test_load_splits_errors_name_the_directory(tmp_path, splits):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotPreparedError, match=f"{missing}.*no such dataset directory"):
        load_splits(missing)
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("not a dataset")
    with pytest.raises(DatasetNotPreparedError, match=f"{tmp_path / 'random'} is not a prepared dataset"):
        load_splits(tmp_path / "random")
    old = _write_prepared(
        tmp_path / "old", datasets.DatasetDict({"train": splits["train"]}), SCHEMA_VERSION + 1
    )
    with pytest.raises(
        DatasetNotPreparedError, match=f"{old} was prepared with schema version {SCHEMA_VERSION + 1}"
    ):
        load_splits(old)
    no_splits = tmp_path / "no_splits"
    no_splits.mkdir()
    (no_splits / MANIFEST_NAME).write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(DatasetNotPreparedError, match="manifest but no saved splits"):
        load_splits(no_splits)


def test_load_splits_rejects_other_columns(tmp_path):
    other = datasets.Dataset.from_dict({"pixels": ["1 2 3"], "emotion": [0]})
    path = _write_prepared(tmp_path / "other", datasets.DatasetDict({"train": other}))
    with pytest.raises(DatasetNotPreparedError, match="split 'train' has columns"):
        load_splits(path)


def test_class_counts(splits):
    labels = np.arange(SPLIT_SIZES["train"]) % NUM_CLASSES
    assert class_counts(splits["train"]) == np.bincount(labels, minlength=NUM_CLASSES).tolist()
    assert len(class_counts(splits["train"].select(range(3)))) == NUM_CLASSES  # absent classes count 0


# --- FaceDataset and DataLoader ---------------------------------------------------------------------------


def test_face_dataset_samples(splits):
    pre = Preprocessing(input_size=64)
    dataset = FaceDataset(splits["validation"], build_eval_transform(pre))
    sample = dataset[5]
    assert set(sample) == {"pixel_values", "labels", "row_id"}
    assert sample["pixel_values"].shape == (1, 64, 64) and sample["pixel_values"].dtype == torch.float32
    assert sample["labels"].dtype == torch.int64 and int(sample["labels"]) == 5 % NUM_CLASSES
    assert sample["row_id"].dtype == torch.int64 and int(sample["row_id"]) == 2 + SPLIT_SIZES["train"] + 5
    face = torch.from_numpy(np.asarray(splits["validation"][5]["image"], dtype=np.uint8))
    assert torch.equal(sample["pixel_values"], pre(face)[0])


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_batched_read_equals_per_item(splits, train):
    pre = Preprocessing()
    transform = build_train_transform(AugmentConfig(), pre) if train else build_eval_transform(pre)
    dataset = FaceDataset(splits["train"], transform, seed=3)
    indices = [17, 0, 42, 5, 5, 31]
    batch = dataset.__getitems__(indices)
    for index, sample in zip(indices, batch, strict=True):
        single = dataset[index]
        assert all(torch.equal(sample[key], single[key]) for key in single)


def _cfg(workers: int) -> DataConfig:
    return DataConfig(num_workers=workers)


def _epoch(loader, epoch: int = 0) -> list[dict[str, torch.Tensor]]:
    loader.dataset.set_epoch(epoch)
    return list(loader)


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(x[key], y[key]) for key in ("pixel_values", "labels", "row_id"))


def _train_loader(splits, workers: int, seed: int, shuffle: bool = True, drop_last: bool = False):
    transform = build_train_transform(AugmentConfig(), Preprocessing())
    return create_loader(splits["train"], transform, 8, shuffle, drop_last, _cfg(workers), seed)


def test_dataloader_batches_shapes_and_cpu_settings(splits):
    loader = _train_loader(splits, 0, seed=0)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (8, 1, 48, 48) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (8,) and batch["labels"].dtype == torch.int64
    assert batch["row_id"].dtype == torch.int64
    if not torch.cuda.is_available():
        assert loader.pin_memory is False  # pinning without a GPU only costs time
    assert loader.persistent_workers is False and loader.prefetch_factor is None


def test_same_seed_same_batches_with_and_without_workers(splits):
    plain = _epoch(_train_loader(splits, 0, seed=11))
    _assert_same_batches(plain, _epoch(_train_loader(splits, 0, seed=11)))
    workers = _epoch(_train_loader(splits, 2, seed=11))
    _assert_same_batches(workers, _epoch(_train_loader(splits, 2, seed=11)))
    # Augmentation is drawn per sample, so the number of workers does not change the batches either.
    _assert_same_batches(plain, workers)
    other = _epoch(_train_loader(splits, 0, seed=12))
    assert not torch.equal(plain[0]["row_id"], other[0]["row_id"])


def test_persistent_workers_follow_the_epoch(splits):
    transform = build_train_transform(AugmentConfig(), Preprocessing())
    loader = create_loader(splits["train"], transform, 8, False, False, _cfg(2), seed=5)
    assert loader.persistent_workers
    epoch0, epoch1, epoch0_again = _epoch(loader, 0), _epoch(loader, 1), _epoch(loader, 0)
    assert torch.equal(epoch0[0]["row_id"], epoch1[0]["row_id"])  # no shuffling: same samples
    assert not torch.equal(epoch0[0]["pixel_values"], epoch1[0]["pixel_values"])  # new augmentation
    _assert_same_batches(epoch0, epoch0_again)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(splits, drop_last):
    train = splits["train"].select(range(45))  # not a multiple of the batch size
    transform = build_eval_transform(Preprocessing())
    loader = create_loader(train, transform, 8, True, drop_last, _cfg(0), seed=0)
    row_ids = torch.cat([batch["row_id"] for batch in _epoch(loader)]).tolist()
    assert len(row_ids) == len(set(row_ids))
    if drop_last:
        assert len(row_ids) == 40 and set(row_ids) <= set(train["row_id"])
    else:
        assert sorted(row_ids) == sorted(train["row_id"])


def test_accelerate_shards_the_epoch_across_processes(splits):
    """Accelerate's prepare (here for two simulated processes) splits each epoch into disjoint halves."""
    shards = []
    for rank in range(2):
        loader = prepare_data_loader(
            _train_loader(splits, 0, seed=9), num_processes=2, process_index=rank, put_on_device=False
        )
        loader.set_epoch(3)
        assert loader.dataset.epoch == 3  # forwarded to FaceDataset: augmentation follows the epoch
        shards.append(torch.cat([batch["row_id"] for batch in loader]).tolist())
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(splits["train"]["row_id"])
