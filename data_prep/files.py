"""File helpers every part of the system uses: a file's SHA-256, and writes that replace a file atomically.

Here, in the bottom layer, so that data prep, the package and the scripts share one copy. Standard library
only: the GPU check's scripts import it before anything else is installed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of the file's bytes, read 4 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_file(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """A temp file beside `path` for the block to write; renamed onto `path` (with `mode`) when the block
    completes, removed if it fails, so readers see the old file or the new one, never part of one."""
    # A unique name per writer: two processes writing the same file never write into each other's temp.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp's files are owner-only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` (text is written as UTF-8) through `atomic_file`."""
    with atomic_file(path, mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
