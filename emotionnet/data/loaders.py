"""Arrow shards -> batches: memory-mapped splits, a batched-read Dataset and its DataLoader."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from data_prep.manifest import DamagedDatasetError, Manifest, check_shards, refresh_hint
from data_prep.schema import IMAGE_SIZE, MANIFEST_NAME, SCHEMA_VERSION, features
from emotionnet.data.augment import AugmentSampler
from emotionnet.errors import UserError


@dataclass
class DataConfig:
    data_dir: str = "dataset/fer2013"  # directory written by the prep stage (Arrow shards + manifest)
    csv_file: str | None = None  # a FER2013 CSV to train on: prepped once into prep_cache_dir/<sha256>
    prep_cache_dir: str = "dataset/cache"
    batch_size: int = 8  # per device
    eval_batch_size: int = 64
    num_workers: int = 4
    pin_memory: bool = True  # only takes effect when CUDA is available
    persistent_workers: bool = True  # only with num_workers > 0
    prefetch_factor: int = 2  # batches per worker; only with num_workers > 0
    # Check the SHA-256 of every shard against the manifest once at the start of a training run (200 MB in
    # 0.7 s on 2 busy cores); the sizes and row counts are checked at every load whatever this says.
    verify_hashes: bool = True

    def __post_init__(self) -> None:
        check_at_least("data", self, 1, ("batch_size", "eval_batch_size", "prefetch_factor"))
        check_at_least("data", self, 0, ("num_workers",))
        check_within_machine("data", self, ("num_workers",))


def check_at_least(section: str, config: object, minimum: int, names: Sequence[str]) -> None:
    """Refuse a count below `minimum` at config load (ValueError naming `section.name`); None is unset."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"{section}.{name} must be at least {minimum}, got {value}")


# Loader worker processes or CPU threads per usable CPU beyond which a setting is a mistake (1000 workers
# fork 1000 processes); a few per CPU still hide I/O waits.
PER_CPU_LIMIT = 4


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (a SLURM allocation, a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS and Windows have no affinity mask


def check_within_machine(section: str, config: object, names: Sequence[str]) -> None:
    """Refuse a count of processes or threads over PER_CPU_LIMIT per usable CPU at config load (ValueError
    naming `section.name`); None is unset."""
    cpus = usable_cpus()
    for name in names:
        value = getattr(config, name)
        if value is not None and value > PER_CPU_LIMIT * cpus:
            raise ValueError(
                f"{section}.{name}={value} is more than this machine can run: at most {PER_CPU_LIMIT * cpus} "
                f"({PER_CPU_LIMIT} per CPU, {cpus} CPU{'s' * (cpus != 1)} usable here)"
            )


class DatasetNotPreparedError(UserError):
    """The data directory is missing, was not written by the prep stage, or by an incompatible version."""


_PREP_HINT = "run `emotionnet-prep` to prepare it"


def load_splits(data_dir: str | Path, verify_hashes: bool = False) -> datasets.DatasetDict:
    """Memory-map the prepared splits, after checking the manifest's schema version, each shard's size (and
    with `verify_hashes` its SHA-256) against the manifest; then the columns and the row counts."""
    path = Path(data_dir)
    manifest = read_manifest(path)
    check_shards(path, manifest, verify_hashes)
    try:
        splits = datasets.load_from_disk(str(path), keep_in_memory=False)
    except FileNotFoundError as err:
        raise DatasetNotPreparedError(f"{path} has a manifest but no saved splits; {_PREP_HINT}") from err
    except (OSError, ValueError, pa.ArrowException) as err:
        # Sizes matched, so some bytes changed: the hashes tell which shard (a raw Arrow error names none).
        check_shards(path, manifest, hashes=True)
        raise DamagedDatasetError(
            f"{path}: its shards cannot be read ({(str(err).strip() or type(err).__name__).splitlines()[0][:200]}); "
            f"{refresh_hint(manifest, path)}"
        ) from err
    if not isinstance(splits, datasets.DatasetDict):
        raise DatasetNotPreparedError(
            f"{path} holds a single dataset, not the train/validation/test splits; {_PREP_HINT}"
        )
    expected = features()
    for name, split in splits.items():
        if split.features != expected:
            raise DatasetNotPreparedError(
                f"{path}: split {name!r} has columns {dict(split.features)}, expected {dict(expected)}; {_PREP_HINT} again"
            )
    for name, stats in manifest.splits.items():
        rows = splits[name].num_rows if name in splits else 0
        if rows != stats.rows:
            raise DamagedDatasetError(
                f"{path}: split {name!r} has {rows} rows but its manifest records {stats.rows}; "
                f"{refresh_hint(manifest, path)}"
            )
    return splits


def read_manifest(path: Path) -> Manifest:
    """The manifest of a prepared dataset of this schema version, or DatasetNotPreparedError saying why not."""
    manifest = path / MANIFEST_NAME
    if not path.is_dir():
        raise DatasetNotPreparedError(f"{path}: no such dataset directory; {_PREP_HINT}")
    if not manifest.is_file():
        raise DatasetNotPreparedError(f"{path} is not a prepared dataset (no {MANIFEST_NAME}); {_PREP_HINT}")
    try:
        version = json.loads(manifest.read_text())["schema_version"]
    except (ValueError, KeyError, TypeError) as err:  # not JSON, not UTF-8, not a mapping
        raise DatasetNotPreparedError(
            f"{manifest}: unreadable manifest, no schema_version; {_PREP_HINT}"
        ) from err
    if version != SCHEMA_VERSION:
        raise DatasetNotPreparedError(
            f"{path} was prepared with schema version {version} but this code reads version {SCHEMA_VERSION}; "
            f"{_PREP_HINT} again"
        )
    try:
        return Manifest.read(path)
    except (KeyError, TypeError, AttributeError) as err:
        raise DatasetNotPreparedError(
            f"{manifest}: unreadable manifest ({err!r}); {_PREP_HINT} again"
        ) from err


class FaceDataset(torch.utils.data.Dataset):
    """One split as {"pixel_values": uint8 (1, 48, 48), "labels": int64, "row_id": int64} samples.

    Faces stay uint8: preprocessing and augmentation run batched on the training device
    (data/augment.py). With `augment`, each sample also carries "augment", its parameter row drawn from
    (seed, epoch, row_id) alone, so batches are the same whatever the number of workers or processes,
    and a resumed run skipping consumed batches sees the same augmentations as an uninterrupted one.
    Call `set_epoch` before iterating each epoch (Accelerate's prepared loader's `set_epoch` forwards it
    here unless its sampler has its own).
    """

    def __init__(self, split: datasets.Dataset, augment: AugmentSampler | None = None):
        self.split = split
        self.augment = augment
        # Arrow format: the numpy formatter widens uint8 faces to int64 and is ~4x slower.
        self._rows = split.with_format("arrow", columns=["image", "label", "row_id"])
        # Shared memory so persistent DataLoader workers see epoch changes made in the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        # One Arrow read per batch: per-row access costs several times more per sample.
        indices = [int(i) for i in indices]
        rows = self._rows[indices].combine_chunks()
        # Array2D storage is list<list<uint8>>; its flattened values are the faces, row after row.
        pixels_u8 = (
            rows.column("image")
            .chunk(0)
            .storage.flatten()
            .flatten()
            .to_numpy(zero_copy_only=False, writable=True)
        )
        pixels = torch.from_numpy(pixels_u8.reshape(len(indices), 1, IMAGE_SIZE, IMAGE_SIZE))
        labels = torch.from_numpy(rows.column("label").chunk(0).to_numpy().astype(np.int64))
        row_ids_np = rows.column("row_id").chunk(0).to_numpy().astype(np.int64)
        samples = [
            {"pixel_values": pixels[k], "labels": labels[k], "row_id": row_id}
            for k, row_id in enumerate(torch.from_numpy(row_ids_np))
        ]
        if self.augment is not None:
            params = torch.from_numpy(self.augment(self.epoch, row_ids_np))
            for sample, row in zip(samples, params, strict=True):
                sample["augment"] = row
        return samples


def create_loader(
    split_ds: datasets.Dataset,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    cfg: DataConfig,
    seed: int,
    augment: AugmentSampler | None = None,
) -> DataLoader:
    """A plain DataLoader of uint8 faces; Accelerate's `prepare` shards its batches across processes.

    The seeded generator fixes the shuffling order (Accelerate synchronizes it across processes);
    `augment` (with its own seed) adds every sample's augmentation parameters (see FaceDataset).
    """
    workers = cfg.num_workers > 0
    return DataLoader(
        FaceDataset(split_ds, augment),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        persistent_workers=cfg.persistent_workers and workers,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


def class_counts(split_ds: datasets.Dataset) -> list[int]:
    """Rows per class, in class-index order (zeros included), for class-balanced loss weights."""
    labels = split_ds.with_format("numpy", columns=["label"])["label"]
    return np.bincount(labels, minlength=split_ds.features["label"].num_classes).tolist()
