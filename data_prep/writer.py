"""Output side of the prep: staged Arrow rows -> a `datasets` DatasetDict on disk, the rejects CSV, and the
temporary directory that is renamed into place only when everything is written."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import psutil
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from datasets.utils.py_utils import asdict

from data_prep.files import file_sha256
from data_prep.manifest import ShardFile
from data_prep.records import BadRow, Chunk, PrepError
from data_prep.schema import CLASS_NAMES, MANIFEST_NAME, NUM_CLASSES, NUM_PIXELS, SPLITS, features

log = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 8192  # ~19 MB of images per shard: a few shards per FER split, read in parallel
REJECTS_NAME = "rejects.csv"
# Record batches inside a shard always hold this many rows, so the bytes do not depend on read block size.
_BATCH_ROWS = 1000
# The temp dirs next to an output carry their owner in their name, `.NAME.partial-HOST-PID-STARTED-TOKEN`
# (STARTED: the process's start time, so that a reused pid is not taken for the owner), so that a later
# prep can tell one left by a killed prep (SIGKILL, power loss) from one that a live prep is writing.
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"
_TEMP_DIR = re.compile(r"(?P<kind>partial|old)-(?P<host>[^-]+)-(?P<pid>[0-9]+)-(?P<started>[0-9]+)-[0-9a-f]+")
_UNOWNED_TEMP_DIR = re.compile(r"partial-[0-9a-f]{12}")  # named by versions before the owner was
_STAGING_SCHEMA = pa.schema(
    [("image", pa.list_(pa.list_(pa.uint8()))), ("label", pa.int64()), ("row_id", pa.int64())]
)


@dataclass(frozen=True)
class Sharding:
    """Either a shard count per split or a row count per shard (default: DEFAULT_SHARD_ROWS rows)."""

    num_shards: int | None = None
    shard_rows: int | None = None

    def shards_for(self, rows: int) -> int:
        if self.num_shards is not None:
            return max(1, min(self.num_shards, rows))
        return max(1, math.ceil(rows / (self.shard_rows or DEFAULT_SHARD_ROWS)))


def _to_table(images: np.ndarray, labels: np.ndarray, row_ids: np.ndarray) -> pa.Table:
    """Rows in the Array2D storage layout (a list of 48 lists of 48 uint8), built without copying per row."""
    n, size = len(images), images.shape[1]
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(n * size + 1, dtype=np.int32) * size), pa.array(images.reshape(n * NUM_PIXELS))
    )
    image = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * size), inner)
    return pa.Table.from_arrays([image, pa.array(labels), pa.array(row_ids)], schema=_STAGING_SCHEMA)


class _RowStream:
    """Reads a staging file back as tables of exactly the requested row counts, one record batch at a time."""

    def __init__(self, path: Path):
        self._reader = pa.ipc.open_stream(pa.OSFile(str(path)))
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def take(self, rows: int) -> pa.Table:
        while self._pending_rows < rows:
            batch = self._reader.read_next_batch()
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
        table = pa.Table.from_batches(self._pending, schema=_STAGING_SCHEMA)
        head, rest = table.slice(0, rows), table.slice(rows)
        self._pending = rest.combine_chunks().to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows
        return head


class StagedDataset:
    """Appends each split's rows to a staging Arrow stream while the input is read (so memory stays flat
    whatever the input size), then cuts the streams into the final shards once the split sizes are known."""

    def __init__(self, staging_dir: Path):
        self._dir = staging_dir
        self._dir.mkdir()
        self._writers: dict[str, pa.ipc.RecordBatchStreamWriter] = {}
        self.class_counts = {split: np.zeros(NUM_CLASSES, dtype=np.int64) for split in SPLITS}

    @property
    def rows(self) -> int:
        return int(sum(counts.sum() for counts in self.class_counts.values()))

    def append(self, chunk: Chunk) -> None:
        for index, split in enumerate(SPLITS):
            rows = np.flatnonzero(chunk.splits == index)
            if len(rows) == 0:
                continue
            if split not in self._writers:
                self._writers[split] = pa.ipc.new_stream(str(self._dir / f"{split}.arrow"), _STAGING_SCHEMA)
            labels = chunk.labels[rows]
            self._writers[split].write_table(_to_table(chunk.images[rows], labels, chunk.row_ids[rows]))
            self.class_counts[split] += np.bincount(labels, minlength=NUM_CLASSES)

    def write_dataset_dict(
        self, out_dir: Path, sharding: Sharding, fingerprint: str
    ) -> dict[str, list[ShardFile]]:
        """Write the DatasetDict layout of `save_to_disk` into out_dir; returns the shards of each split."""
        for writer in self._writers.values():
            writer.close()
        splits = [split for split in SPLITS if split in self._writers]
        shards = {}
        for split in splits:
            rows = int(self.class_counts[split].sum())
            num_shards = self._write_split(split, rows, out_dir / split, sharding.shards_for(rows))
            _write_split_metadata(out_dir / split, num_shards, f"{fingerprint}/{split}")
            names = (f"{split}/{_shard_name(index, num_shards)}" for index in range(num_shards))
            shards[split] = [_shard_file(out_dir, name) for name in names]
        (out_dir / datasets.config.DATASETDICT_JSON_FILENAME).write_text(json.dumps({"splits": splits}))
        shutil.rmtree(self._dir)
        return shards

    def _write_split(self, split: str, rows: int, split_dir: Path, num_shards: int) -> int:
        split_dir.mkdir()
        stream = _RowStream(self._dir / f"{split}.arrow")
        # Same contiguous split into near-equal shards as datasets' `shard(contiguous=True)`.
        base, extra = divmod(rows, num_shards)
        for index in range(num_shards):
            writer = ArrowWriter(features=features(), path=str(split_dir / _shard_name(index, num_shards)))
            left = base + (index < extra)
            while left:
                table = stream.take(min(_BATCH_ROWS, left))
                writer.write_table(table, writer_batch_size=_BATCH_ROWS)
                left -= table.num_rows
            writer.finalize()
            writer.close()
        return num_shards


def _shard_name(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}.arrow"


def _shard_file(out_dir: Path, name: str) -> ShardFile:
    return ShardFile(name, (out_dir / name).stat().st_size, file_sha256(out_dir / name))


def _write_split_metadata(split_dir: Path, num_shards: int, fingerprint_seed: str) -> None:
    """state.json and dataset_info.json exactly as `Dataset.save_to_disk` writes them, except that the
    fingerprint comes from the input's hash instead of a random one, so equal inputs give equal bytes."""
    state = {
        "_data_files": [{"filename": _shard_name(i, num_shards)} for i in range(num_shards)],
        "_fingerprint": hashlib.sha256(fingerprint_seed.encode()).hexdigest()[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    with open(split_dir / datasets.config.DATASET_STATE_JSON_FILENAME, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    info = asdict(datasets.DatasetInfo(features=features()))
    with open(split_dir / datasets.config.DATASET_INFO_FILENAME, "w", encoding="utf-8") as f:
        json.dump({key: info[key] for key in sorted(info)}, f, indent=2)


class RejectsFile:
    """The quarantine CSV: one row per rejected input row, with its line number, reason and original text."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(["line_number", "reason", "original_line"])

    def write(self, rows: list[BadRow]) -> None:
        self._csv.writerows((row.line, row.reason, row.text) for row in rows)

    def close(self) -> None:
        self._file.close()


def class_count_dict(counts: np.ndarray) -> dict[str, int]:
    return {name: int(count) for name, count in zip(CLASS_NAMES, counts, strict=True)}


def check_output_target(target: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (without --overwrite) or that is not ours to replace."""
    if not target.exists() and not target.is_symlink():
        return
    if not overwrite:
        raise PrepError(f"{target} already exists; pass --overwrite to replace it.")
    if not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST_NAME).is_file()):
        raise PrepError(f"refusing to overwrite {target}: it is not an earlier emotionnet-prep output.")


def owner_tag() -> str:
    """HOST-PID-STARTED of this process, as the names of its temp dirs carry it."""
    me = psutil.Process()
    return f"{_HOST}-{me.pid}-{int(me.create_time())}"


def _temp_dir(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{owner_tag()}-{secrets.token_hex(6)}"


def owner_is_gone(host: str, pid: int, started: int) -> bool:
    """Whether the process an `owner_tag` names has ended (False when that cannot be told from here)."""
    if host != _HOST:
        return False  # another machine's prep (a shared file system): nothing here can tell; leave it
    try:
        return abs(psutil.Process(pid).create_time() - started) > 1  # the pid now names a later process
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # e.g. access denied: the process exists
        return False


def remove_stale_temp_dirs(target: Path) -> None:
    """Remove the temp dirs that preps into `target` left when they were killed (nothing runs on SIGKILL),
    saying so; those of live preps and of other machines stay. A killed prep's previous output, moved
    aside for the new one, goes back to `target` if nothing is there."""
    prefix = f".{target.name}."
    for path in sorted(target.parent.glob(f"{glob.escape(prefix)}*-*")):
        name = path.name[len(prefix) :]
        if path.is_symlink() or not path.is_dir():
            continue
        if _UNOWNED_TEMP_DIR.fullmatch(name):
            log.warning("%s was left by an earlier prep that recorded no owner: remove it by hand", path)
            continue
        match = _TEMP_DIR.fullmatch(name)
        if not match:
            continue
        host, pid = match["host"], int(match["pid"])
        if not owner_is_gone(host, pid, int(match["started"])):
            continue
        killed = f"a prep (pid {pid} on {host}) that was killed"
        if match["kind"] == "old" and not target.exists() and (path / MANIFEST_NAME).is_file():
            try:
                os.replace(path, target)
            except OSError:  # another prep restored it first
                continue
            log.warning("restored %s from %s, moved aside by %s", target, path, killed)
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s, left by %s", path, killed)


@contextmanager
def atomic_output_dir(target: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh directory next to `target` that replaces it only if the block completes; removed otherwise,
    so an interrupted or failed prep never leaves a partial dataset at `target` (and one that was killed
    leaves a temp dir that the next prep into `target` removes)."""
    if target.parent.is_dir():
        remove_stale_temp_dirs(target)
    check_output_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_dir(target, "partial")
    try:
        tmp.mkdir(mode=0o755)  # inside the try: an interrupt right after it still removes it
        yield tmp
        check_output_target(target, overwrite)  # something may have appeared there meanwhile
        if target.exists():
            old = _temp_dir(target, "old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
