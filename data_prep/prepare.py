"""The prep as a library call: input (CSV, CSV.gz or image folder) -> Arrow shards + manifest."""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from data_prep.csv_source import DEFAULT_BLOCK_BYTES, CsvSource
from data_prep.files import no_room_message, out_of_room
from data_prep.image_folder import ImageFolderSource
from data_prep.manifest import PREP_VERSION, Manifest, SplitStats
from data_prep.records import BadRow, PrepError
from data_prep.schema import SCHEMA_VERSION
from data_prep.writer import (
    REJECTS_NAME,
    RejectsFile,
    Sharding,
    StagedDataset,
    atomic_output_dir,
    class_count_dict,
)

BadRowPolicy = Literal["strict", "quarantine"]


class BadRowsError(PrepError):
    """Strict mode found invalid rows; the message lists the first ones with file, line and reason."""

    def __init__(self, source: Path, first: list[BadRow], count: int, hint: str | None = None):
        self.bad_rows = first
        self.count = count
        listed = "".join(f"\n  {source}:{row.line}: {row.reason}" for row in first)
        more = f"\n  ... and {count - len(first)} more" if count > len(first) else ""
        hint = hint or (
            f"set them aside with `emotionnet-prep {source} DIR --on-bad-rows quarantine` and use DIR instead"
        )
        super().__init__(
            f"{source} has {count} invalid row{'s' * (count != 1)}; nothing was written ({hint}):{listed}{more}"
        )


@dataclass(frozen=True)
class PrepOptions:
    sharding: Sharding = Sharding()
    on_bad_rows: BadRowPolicy = "strict"
    max_errors: int = 10  # bad rows listed in a strict-mode error
    overwrite: bool = False
    progress: bool = True
    block_bytes: int = DEFAULT_BLOCK_BYTES  # CSV read block: memory per step vs per-block overhead
    # How a strict-mode error tells the user to set bad rows aside. None: with the command that can
    # (emotionnet-prep ... --on-bad-rows quarantine); a caller with its own way passes it (emotionnet-prep: the
    # flag itself), so that no hint names a flag its command does not have.
    bad_rows_hint: str | None = None


def open_source(path: Path, block_bytes: int = DEFAULT_BLOCK_BYTES) -> CsvSource | ImageFolderSource:
    if not path.exists():
        raise PrepError(f"{path} does not exist.")
    if path.is_dir():
        return ImageFolderSource(path)
    return CsvSource(path, block_bytes)


def prepare(input_path: str | Path, output_dir: str | Path, options: PrepOptions = PrepOptions()) -> Manifest:
    """Convert a FER2013 CSV / CSV.gz / image folder to a DatasetDict at output_dir; return its manifest.

    Raises PrepError (BadRowsError for strict-mode bad rows) with a user-facing message, also for an
    OSError such as a read-only output location or a full disk; output_dir is then left as it was."""
    try:
        return _prepare(Path(input_path), Path(output_dir), options)
    except OSError as err:
        if out_of_room(err):  # Arrow's wording names no file: say where, and how much room there is
            raise PrepError(f"{no_room_message(Path(output_dir))}; nothing was written") from err
        raise PrepError(f"{err.filename or output_dir}: {err.strerror or err}; nothing was written") from err


def _prepare(input_path: Path, output_dir: Path, options: PrepOptions) -> Manifest:
    started = time.perf_counter()
    source = open_source(input_path, options.block_bytes)
    quarantine = options.on_bad_rows == "quarantine"
    with atomic_output_dir(output_dir, options.overwrite) as tmp:
        staged = StagedDataset(tmp / ".staging")
        rejects = RejectsFile(tmp / REJECTS_NAME) if quarantine else None
        first_bad: list[BadRow] = []
        rows_read = rows_rejected = 0
        unit, total = source.progress_unit, source.progress_total
        with tqdm(total=total, unit=unit, unit_scale=True, desc=f"prep {input_path.name}", file=sys.stderr,
                  disable=not options.progress) as bar:  # fmt: skip
            for chunk in source.chunks(bar.update):
                rows_read += chunk.rows_read
                rows_rejected += len(chunk.bad_rows)
                first_bad += chunk.bad_rows[: max(0, options.max_errors - len(first_bad))]
                if rejects is not None:
                    rejects.write(chunk.bad_rows)
                if quarantine or rows_rejected == 0:  # strict: keep validating to count, stop writing
                    staged.append(chunk)
        if rejects is not None:
            rejects.close()
        if rows_rejected and not quarantine:
            raise BadRowsError(input_path, first_bad, rows_rejected, options.bad_rows_hint)
        if staged.rows == 0:
            what = f"all {rows_read} rows were rejected" if rows_read else "it has no data rows"
            raise PrepError(f"nothing to write from {input_path}: {what}.")
        if rejects is not None and not rows_rejected:
            rejects.path.unlink()
        if isinstance(source, ImageFolderSource):
            source.write_index(tmp)
        info = source.info()
        fingerprint = hashlib.sha256(
            f"{info.sha256}|{SCHEMA_VERSION}|{PREP_VERSION}|{options.sharding}".encode()
        ).hexdigest()
        shards = staged.write_dataset_dict(tmp, options.sharding, fingerprint)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            prep_version=PREP_VERSION,
            source=info,
            on_bad_rows=options.on_bad_rows,
            rows_read=rows_read,
            rows_written=staged.rows,
            rows_rejected=rows_rejected,
            rejects_file=REJECTS_NAME if rows_rejected else None,
            splits={
                split: SplitStats(
                    int(staged.class_counts[split].sum()),
                    len(files),
                    class_count_dict(staged.class_counts[split]),
                    files,
                )
                for split, files in shards.items()
            },
            fingerprint=fingerprint[:16],
            wall_time_s=round(time.perf_counter() - started, 3),
        )
        manifest.write(tmp)
    return manifest
