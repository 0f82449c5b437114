"""File helpers every part of the system uses: a file's SHA-256, writes that replace a file atomically, and
directories replaced atomically (with the recovery of what a crash mid-replacement leaves).

Here, in the bottom layer, so that data prep, the package and the scripts share one copy. Standard library
only: the GPU check's scripts import it before anything else is installed.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import shutil
import sys
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
def atomic_file(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temp file beside `path` for the block to write; renamed onto `path` (with `mode`, by default what
    the umask allows) when the block completes, removed if it fails, so readers see the old file or the
    new one, never part of one."""
    # A unique name per writer: two processes writing the same file never write into each other's temp.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)  # mkstemp's are owner-only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` (text is written as UTF-8) through `atomic_file`."""
    with atomic_file(path, mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


# renameat2(2)'s flag that swaps two existing paths in one atomic step (Linux 3.15+, most file systems).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def exchange_directories(a: Path, b: Path) -> bool:
    """Swap two existing directories atomically; False where the system or file system cannot."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_directory(staged: Path, directory: Path) -> Path:
    """Move a completed `staged` directory to `directory`, replacing any previous one.

    Readers find the old directory or the new one, never a mix and never none: the two are swapped in one
    rename, then the old one is removed. Where the file system cannot swap, the old one is moved aside to
    `.NAME.old` first; a crash between the two renames leaves it there for `recover_staged` to put back.
    """
    share_tree(staged)
    if not directory.exists():
        os.replace(staged, directory)
    elif exchange_directories(staged, directory):
        shutil.rmtree(staged)  # now the old one
    else:
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(staged, directory)
        shutil.rmtree(old)
    return directory


def staged_directory(directory: Path) -> Path:
    """A new empty hidden directory beside `directory` to build its replacement in (see `replace_directory`):
    created with the umask's permissions, not mkdtemp's owner-only ones, so teammates can read the result."""
    staged = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    os.chmod(staged, 0o777 & ~current_umask())
    return staged


# `.NAME.old` (moved aside) and `.NAME.XXXXXXXX` (staged by mkdtemp): what a crash mid-replacement leaves.
_LEFTOVER = re.compile(r"\.(?P<name>[^.].*)\.(?:old|[a-z0-9_]{8})")


def recover_staged(parent: Path) -> list[str]:
    """After a crash: put back each directory moved aside whose replacement never arrived, and remove the
    staged and moved-aside directories left in `parent`. Only for a parent no live writer uses (a locked
    run directory). Returns what was put back or removed, for the log."""
    done = []
    for entry in sorted(parent.iterdir()) if parent.is_dir() else []:
        match = _LEFTOVER.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        target = parent / match["name"]
        if entry.name.endswith(".old") and not target.exists():
            os.replace(entry, target)
            done.append(f"restored {target.name} from {entry.name}")
        else:
            shutil.rmtree(entry)
            done.append(f"removed {entry.name}")
    return done


def share_tree(root: Path) -> None:
    """Give `root` and everything in it the permissions the umask allows: some writers (mkdtemp,
    safetensors) create owner-only files, which teammates on a shared cluster could not read."""
    mask = current_umask()
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How libraries that wrap the OS error word it: safetensors ("os error 28"), torch.save ("file write failed").
_NO_ROOM_TEXT = ("No space left", "Disk quota exceeded", "File too large", "os error 28", "os error 122",
                 "os error 27", "file write failed")  # fmt: skip


def out_of_room(err: BaseException | None) -> bool:
    """Whether a failed write ran out of room (a full disk, a quota, a file-size limit), whichever library
    raised it: an OSError's errno, or the text of the errors that wrap one."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _NO_ROOM or any(t in str(err) for t in _NO_ROOM_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def no_room_message(path: Path, needed_bytes: int | None = None) -> str:
    """One sentence for a write that ran out of room: where, how much is free there, how much it needs."""
    where = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(where).free / 1e6
    needed = f", about {needed_bytes / 1e6:.1f} MB needed" if needed_bytes else ""
    return (
        f"{path}: the write ran out of room ({free:.1f} MB free there{needed}; a full disk, a quota or a "
        "file-size limit): free some space or write elsewhere"
    )


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def current_umask() -> int:
    """The process's umask: from /proc on Linux; elsewhere os.umask, which can only read it by setting it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
