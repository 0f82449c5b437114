"""The manifest written next to the shards: where the data came from and what the prep did with it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.records import SourceInfo
from data_prep.schema import MANIFEST_NAME

# Bump when the prep's output for the same input changes (readers use it to invalidate caches).
PREP_VERSION = "1.0"


@dataclass(frozen=True)
class SplitStats:
    rows: int
    shards: int
    classes: dict[str, int]  # class name -> rows, every class listed


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

    def write(self, out_dir: Path) -> None:
        (out_dir / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, out_dir: Path) -> Manifest:
        raw = json.loads((Path(out_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
        raw["source"] = SourceInfo(**raw["source"])
        raw["splits"] = {name: SplitStats(**stats) for name, stats in raw["splits"].items()}
        return cls(**raw)
