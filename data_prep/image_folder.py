"""The image-folder release of FER2013: train/<class>/Training_<id>.jpg and test/<class>/PublicTest_<id>.jpg,
test/<class>/PrivateTest_<id>.jpg, read as the same validated `Chunk`s as the CSV.

Rows are ordered by split (Training, PublicTest, PrivateTest), then by the numeric id in the file name,
which is the order of the CSV re-encoded from this release. A row's id is the line it would have in that
CSV (header = line 1), and `image_index.csv` in the output maps it back to the file."""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_prep.records import BadRow, Chunk, PrepError, SourceInfo
from data_prep.schema import CLASS_NAMES, IMAGE_SIZE, USAGE_TO_SPLIT

# Which Usage prefixes each top-level folder may hold.
FOLDER_USAGES = {"train": ("Training",), "test": ("PublicTest", "PrivateTest")}
_FILE_NAME = re.compile(r"^(Training|PublicTest|PrivateTest)_(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_USAGE_ORDER = {usage: rank for rank, usage in enumerate(USAGE_TO_SPLIT)}
_CHUNK_FILES = 2048
INDEX_NAME = "image_index.csv"


@dataclass(frozen=True)
class _Entry:
    rel_path: str
    label: int
    usage: str | None  # None: the file name does not say which split it belongs to
    problem: str | None = None

    def sort_key(self) -> tuple:
        if self.usage is None:
            return (len(_USAGE_ORDER), 0, self.rel_path)  # unusable names go last
        return (_USAGE_ORDER[self.usage], int(_FILE_NAME.match(Path(self.rel_path).name)[2]), self.rel_path)


def _list_entries(root: Path) -> list[_Entry]:
    entries = []
    for folder, usages in FOLDER_USAGES.items():
        if not (root / folder).is_dir():
            continue
        for class_dir in sorted((root / folder).iterdir()):
            if class_dir.name.startswith("."):
                continue
            if not class_dir.is_dir() or class_dir.name.lower() not in CLASS_NAMES:
                raise PrepError(
                    f"{class_dir} is not one of the class folders {', '.join(CLASS_NAMES)} of the FER2013 "
                    "image-folder release."
                )
            label = CLASS_NAMES.index(class_dir.name.lower())
            for file in sorted(class_dir.iterdir()):
                if file.name.startswith("."):
                    continue
                rel_path = file.relative_to(root).as_posix()
                match = _FILE_NAME.match(file.name)
                if match is None or match[1] not in usages:
                    expected = " or ".join(f"{usage}_<id>.jpg" for usage in usages)
                    entries.append(_Entry(rel_path, label, None, f"file name is not {expected}"))
                else:
                    entries.append(_Entry(rel_path, label, match[1]))
    if not entries:
        raise PrepError(
            f"{root} is a folder but not the FER2013 image-folder release "
            "(expected train/<class>/Training_<id>.jpg and test/<class>/PublicTest_<id>.jpg files)."
        )
    return sorted(entries, key=_Entry.sort_key)


def decode_face(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """The 48x48 grayscale face in an image file's bytes, or the reason it is not one."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None, "cannot be decoded as an image"
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        return None, f"image is {image.shape[1]}x{image.shape[0]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
    return image, None


class ImageFolderSource:
    """Image files listed once up front (names only), then decoded chunk by chunk."""

    progress_unit = "img"

    def __init__(self, root: Path):
        self.root = root
        self._entries = _list_entries(root)
        self._sha256: str | None = None
        self._size_bytes = 0

    @property
    def progress_total(self) -> int:
        return len(self._entries)

    def info(self) -> SourceInfo:
        assert self._sha256 is not None, "read the chunks first"
        return SourceInfo(str(self.root.resolve()), "image_folder", self._size_bytes, self._sha256)

    def write_index(self, out_dir: Path) -> None:
        """`image_index.csv`: row id -> file path relative to the root, for every file (rejected ones too)."""
        with open(out_dir / INDEX_NAME, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["row_id", "path"])
            writer.writerows((position + 2, entry.rel_path) for position, entry in enumerate(self._entries))

    def chunks(self, on_files_read: Callable[[int], None] = lambda n: None) -> Iterator[Chunk]:
        # The folder's hash covers every file's relative path and bytes, in row order.
        digest = hashlib.sha256()
        self._size_bytes = 0
        for start in range(0, len(self._entries), _CHUNK_FILES):
            images, labels, splits, row_ids, bad_rows = [], [], [], [], []
            for position, entry in enumerate(self._entries[start : start + _CHUNK_FILES], start=start):
                row_id = position + 2
                try:
                    data = (self.root / entry.rel_path).read_bytes()
                except OSError as e:
                    raise PrepError(f"cannot read {self.root / entry.rel_path}: {e.strerror or e}.") from None
                digest.update(f"{entry.rel_path}\0{len(data)}\0".encode())
                digest.update(data)
                self._size_bytes += len(data)
                image, problem = decode_face(data)
                problem = entry.problem or problem
                if problem is not None:
                    bad_rows.append(BadRow(row_id, problem, entry.rel_path))
                    continue
                images.append(image)
                labels.append(entry.label)
                splits.append(_USAGE_ORDER[entry.usage])
                row_ids.append(row_id)
            on_files_read(len(images) + len(bad_rows))
            yield Chunk(
                images=np.stack(images) if images else np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
                labels=np.array(labels, dtype=np.int64),
                splits=np.array(splits, dtype=np.int64),
                row_ids=np.array(row_ids, dtype=np.int64),
                bad_rows=bad_rows,
            )
        self._sha256 = digest.hexdigest()
