"""Types passed from the input readers (CSV, image folder) to the dataset writer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emotionnet.errors import UserError


class PrepError(UserError):
    """Bad input or refused output; the message is one sentence meant for the user, shown without a traceback."""


@dataclass(frozen=True)
class BadRow:
    """A rejected input row: its line number (header = line 1; for image folders, the row id), the reason,
    and the original text (the CSV line, or the image's path)."""

    line: int
    reason: str
    text: str


@dataclass
class Chunk:
    """A block of validated rows in input order, plus the rows of that block that failed validation."""

    images: np.ndarray  # (n, 48, 48) uint8
    labels: np.ndarray  # (n,) int64, index into schema.CLASS_NAMES
    splits: np.ndarray  # (n,) int64, index into schema.SPLITS
    row_ids: np.ndarray  # (n,) int64
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return len(self.row_ids) + len(self.bad_rows)


@dataclass(frozen=True)
class SourceInfo:
    """What the manifest records about the input; sha256 covers the file as stored (compressed if .gz)."""

    path: str
    kind: str  # "csv", "csv.gz" or "image_folder"
    size_bytes: int
    sha256: str
