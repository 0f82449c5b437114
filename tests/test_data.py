"""Input pipeline: preprocessing, TTA views, prepared-split loading, FaceDataset and its DataLoader.

The augmentation itself (batched on the device) is tested in tests/test_augment.py."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from torchvision.transforms.v2 import functional as F

from data_prep.files import file_sha256
from data_prep.manifest import PREP_VERSION, Manifest, ShardFile, SplitStats
from data_prep.records import SourceInfo
from data_prep.schema import IMAGE_SIZE, NUM_CLASSES, SCHEMA_VERSION, features
from emotionnet.data.augment import AugmentSampler, param_count
from emotionnet.data.loaders import (
    DataConfig,
    DatasetNotPreparedError,
    FaceDataset,
    class_counts,
    create_loader,
    load_splits,
)
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import AugmentConfig, tta_views

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
    _write_manifest(path, splits, schema_version)
    return path


def _write_manifest(path, splits: datasets.DatasetDict, schema_version: int = SCHEMA_VERSION) -> None:
    """The manifest the prep would write for `splits` saved at `path`: rows and shards (size, SHA-256)."""
    stats = {}
    for name, split in splits.items():
        shards = sorted((path / name).glob("*.arrow"))
        files = [ShardFile(str(f.relative_to(path)), f.stat().st_size, file_sha256(f)) for f in shards]
        stats[name] = SplitStats(split.num_rows, len(files), {}, files)
    rows = sum(split.num_rows for split in splits.values())
    source = SourceInfo("synthetic.csv", "csv", 0, "")
    Manifest(schema_version, PREP_VERSION, source, "strict", rows, rows, 0, None, stats, "", 0.0).write(path)


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


# --- preprocessing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [48, 64])
def test_preprocessing_resizes_scales_and_normalizes(size):
    pre = Preprocessing(input_size=size)
    images = _images()
    out = pre(images)
    assert out.shape == (6, 1, size, size) and out.dtype == torch.float32
    expected = (F.resize(images, [size, size], antialias=True).float() / 255 - pre.mean) / pre.std
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(pre(images[2]), out[2:3]) and torch.equal(pre(images[:, 0]), out)
    lo, hi = (0 - pre.mean) / pre.std, (1 - pre.mean) / pre.std
    assert lo - 1e-6 <= out.min() and out.max() <= hi + 1e-6


def test_preprocessing_rejects_float_input():
    with pytest.raises(TypeError, match="uint8"):
        Preprocessing()(_images().float())


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
    _write_manifest(no_splits, datasets.DatasetDict())
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


def test_face_dataset_samples_are_uint8_faces(splits):
    dataset = FaceDataset(splits["validation"])
    sample = dataset[5]
    assert set(sample) == {"pixel_values", "labels", "row_id"}
    assert sample["pixel_values"].shape == (1, 48, 48) and sample["pixel_values"].dtype == torch.uint8
    assert sample["labels"].dtype == torch.int64 and int(sample["labels"]) == 5 % NUM_CLASSES
    assert sample["row_id"].dtype == torch.int64 and int(sample["row_id"]) == 2 + SPLIT_SIZES["train"] + 5
    face = torch.from_numpy(np.asarray(splits["validation"][5]["image"], dtype=np.uint8))
    assert torch.equal(sample["pixel_values"][0], face)


def test_face_dataset_adds_each_faces_augmentation_parameters(splits):
    pre = Preprocessing(input_size=64)
    sampler = AugmentSampler(AugmentConfig(), pre, seed=3)
    dataset = FaceDataset(splits["train"], sampler)
    dataset.set_epoch(2)
    sample = dataset[7]
    assert sample["augment"].shape == (param_count(64),) and sample["augment"].dtype == torch.float32
    expected = sampler(2, np.array([int(sample["row_id"])]))[0]
    assert torch.equal(sample["augment"], torch.from_numpy(expected))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_batched_read_equals_per_item(splits, train):
    sampler = AugmentSampler(AugmentConfig(), Preprocessing(), seed=3) if train else None
    dataset = FaceDataset(splits["train"], sampler)
    indices = [17, 0, 42, 5, 5, 31]
    batch = dataset.__getitems__(indices)
    for index, sample in zip(indices, batch, strict=True):
        single = dataset[index]
        assert (
            set(sample)
            == set(single)
            == {"pixel_values", "labels", "row_id"} | ({"augment"} if train else set())
        )
        assert all(torch.equal(sample[key], single[key]) for key in single)


def _cfg(workers: int) -> DataConfig:
    return DataConfig(num_workers=workers)


def _epoch(loader, epoch: int = 0) -> list[dict[str, torch.Tensor]]:
    loader.dataset.set_epoch(epoch)
    return list(loader)


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(x[key], y[key]) for key in ("pixel_values", "labels", "row_id", "augment"))


def _train_loader(splits, workers: int, seed: int, shuffle: bool = True, drop_last: bool = False):
    sampler = AugmentSampler(AugmentConfig(), Preprocessing(), seed)
    return create_loader(splits["train"], 8, shuffle, drop_last, _cfg(workers), seed, augment=sampler)


def test_dataloader_batches_shapes_and_cpu_settings(splits):
    loader = _train_loader(splits, 0, seed=0)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (8, 1, 48, 48) and batch["pixel_values"].dtype == torch.uint8
    assert batch["augment"].shape == (8, param_count(48)) and batch["augment"].dtype == torch.float32
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
    # Augmentation is drawn per sample, so the number of workers does not change the parameters either.
    _assert_same_batches(plain, workers)
    other = _epoch(_train_loader(splits, 0, seed=12))
    assert not torch.equal(plain[0]["row_id"], other[0]["row_id"])


def test_persistent_workers_follow_the_epoch(splits):
    loader = _train_loader(splits, 2, seed=5, shuffle=False)
    assert loader.persistent_workers
    epoch0, epoch1, epoch0_again = _epoch(loader, 0), _epoch(loader, 1), _epoch(loader, 0)
    assert torch.equal(epoch0[0]["row_id"], epoch1[0]["row_id"])  # no shuffling: same samples
    assert not torch.equal(epoch0[0]["augment"], epoch1[0]["augment"])  # new augmentation
    _assert_same_batches(epoch0, epoch0_again)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(splits, drop_last):
    train = splits["train"].select(range(45))  # not a multiple of the batch size
    loader = create_loader(train, 8, True, drop_last, _cfg(0), seed=0)
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
