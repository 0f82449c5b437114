"""The manifest written next to the shards: where the data came from and what the prep did with it."""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.files import file_sha256
from data_prep.records import PrepError, SourceInfo
from data_prep.schema import MANIFEST_NAME

log = logging.getLogger(__name__)

# Bump when the prep's output for the same input changes (readers use it to invalidate caches).
PREP_VERSION = "1.0"


class DamagedDatasetError(PrepError):
    """A prepared dataset whose files no longer match its manifest (truncated, altered, missing)."""


@dataclass(frozen=True)
class ShardFile:
    """A shard as the prep wrote it, so that a load can tell a truncated or altered one."""

    name: str  # relative to the dataset directory, e.g. "train/data-00000-of-00001.arrow"
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitStats:
    rows: int
    shards: int
    classes: dict[str, int]  # class name -> rows, every class listed
    files: list[ShardFile] | None = None  # None: prepared by a version that did not record them


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    prep_version: str
    source: SourceInfo
    on_bad_rows: str
    rows_read: int
    rows_written: int
    rows_rejected: int
    rejects_file: str | None  # relative to the output directory; None when no row was rejected
    splits: dict[str, SplitStats]
    fingerprint: str
    wall_time_s: float

    @property
    def records_shards(self) -> bool:
        """Whether every split lists its shards' sizes and hashes (older preps did not)."""
        return all(stats.files is not None for stats in self.splits.values())

    def write(self, out_dir: Path) -> None:
        (out_dir / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, out_dir: Path) -> Manifest:
        raw = json.loads((Path(out_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
        raw["source"] = SourceInfo(**raw["source"])
        raw["splits"] = {name: _split_stats(stats) for name, stats in raw["splits"].items()}
        return cls(**raw)


def _split_stats(raw: dict) -> SplitStats:
    files = raw.pop("files", None)
    return SplitStats(**raw, files=None if files is None else [ShardFile(**file) for file in files])


def refresh_hint(manifest: Manifest, directory: Path) -> str:
    """The command that prepares `directory` again from the input its manifest names."""
    command = shlex.join(["emotionnet-prep", manifest.source.path, str(directory), "--overwrite"])
    return f"re-run `{command}` to prepare it again"


def check_shards(directory: Path, manifest: Manifest, hashes: bool) -> None:
    """Check every shard the manifest lists: there, of its recorded size, and with `hashes` of its recorded
    SHA-256 (a read of every byte). DamagedDatasetError names the first shard that is not; a manifest of a
    version that recorded no shards gets a warning, as nothing can be checked."""
    if not manifest.records_shards:
        log.warning("%s: its manifest records no shard sizes or hashes (an older emotionnet-prep wrote it), "
                    "so its shards cannot be checked; %s", directory, refresh_hint(manifest, directory))  # fmt: skip
        return
    started, total = time.perf_counter(), 0
    for stats in manifest.splits.values():
        for shard in stats.files:
            path = directory / shard.name
            size = path.stat().st_size if path.is_file() else None
            if size is None:
                problem = "it is missing"
            elif size != shard.bytes:
                problem = (
                    f"it is {size} bytes but the manifest records {shard.bytes} (cut short or overwritten?)"
                )
            elif hashes and file_sha256(path) != shard.sha256:
                problem = "its SHA-256 is not the one the manifest records (its bytes changed)"
            else:
                total += size
                continue
            raise DamagedDatasetError(f"{path}: {problem}; {refresh_hint(manifest, directory)}")
    if hashes:
        log.info("%s: the SHA-256 of its %.0f MB of shards checked in %.1f s", directory, total / 1e6,
                 time.perf_counter() - started)  # fmt: skip
