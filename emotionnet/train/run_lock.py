"""`<run>/run.lock`: one live run per run directory.

The lock names its holder (host, pid, process start time). It appears atomically with its content (a
hard link of a complete temp file, which fails if the lock exists), so a reader never sees a half-written
one. A lock whose holder has ended on this host (a killed run: SIGKILL runs no cleanup) is stale and is
taken over with a warning; so is the lock of an earlier attempt of this SLURM job (a requeued job, whose
killed attempt may have run on another node: SLURM runs one attempt of a job at a time). Any other holder
on another host cannot be checked from here and is assumed alive.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.writer import owner_is_gone, owner_tag
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode
from emotionnet.run_layout import LOCK, RunLayout

log = logging.getLogger(__name__)


class RunBusyError(UserError):
    """The run directory is held by another live run."""

    exit_code = ExitCode.BUSY


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started: int  # process start time (s since the epoch): tells a reused pid from the holder
    slurm_job: str | None = None  # SLURM_JOB_ID, when the holder runs in a SLURM job
    slurm_attempt: int = 0  # SLURM_RESTART_COUNT: how many times that job was requeued

    @classmethod
    def this_process(cls) -> LockHolder:
        host, pid, started = owner_tag().rsplit("-", 2)
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
        job = os.environ.get("SLURM_JOB_ID")
        return cls(host, int(pid), int(started), job, int(attempt) if attempt.isdigit() else 0)

    def earlier_attempt_of(self, other: LockHolder) -> bool:
        """This holder ran in an earlier attempt of `other`'s SLURM job (requeued since)."""
        return (
            self.slurm_job is not None
            and self.slurm_job == other.slurm_job
            and self.slurm_attempt < other.slurm_attempt
        )

    @classmethod
    def read(cls, path: Path) -> LockHolder | None:
        """The holder a lock file names, or None if it names none (unreadable)."""
        try:
            return cls(**json.loads(path.read_text()))
        except (UnicodeDecodeError, ValueError, TypeError):
            return None

    def __str__(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on host {self.host}, started {started}"


class RunLock:
    """Hold `<run_dir>/run.lock` for the life of a run (a context manager); RunBusyError if it is taken."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = RunLayout(self.run_dir).lock
        self.holder = LockHolder.this_process()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(3):  # a stale lock taken over by another starter at the same moment: look again
            if self._create():
                return
            try:
                holder = LockHolder.read(self.path)
            except FileNotFoundError:
                continue  # released meanwhile
            if holder is None:
                raise RunBusyError(
                    f"{self.path} names no run (unreadable); remove it if no run is using {self.run_dir}"
                )
            requeued = holder.earlier_attempt_of(self.holder)
            if not requeued and not owner_is_gone(holder.host, holder.pid, holder.started):
                raise RunBusyError(self._busy_message(holder))
            if self._take_over(holder):
                why = f"an earlier attempt of SLURM job {holder.slurm_job}" if requeued else "which has ended"
                log.warning("took over %s from %s, %s (a killed run)", self.path, holder, why)
        raise RunBusyError(f"{self.run_dir}: another run is starting in it at the same time")

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        try:
            if LockHolder.read(self.path) == self.holder:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def _busy_message(self, holder: LockHolder) -> str:
        message = f"run directory {self.run_dir} is in use by another run ({holder}); wait for it or choose another --run_name"
        if holder.host != self.holder.host:
            message += f" (if that run is gone, remove {self.path})"
        return message

    def _create(self) -> bool:
        """Create the lock with this process as holder, unless it exists."""
        tmp = self.path.with_name(f".{LOCK}.{self.holder.pid}.tmp")
        tmp.write_text(json.dumps(asdict(self.holder)))
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _take_over(self, stale: LockHolder) -> bool:
        """Remove the lock if it still names `stale`; the caller then creates its own."""
        aside = self.path.with_name(f".{LOCK}.stale.{self.holder.pid}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if LockHolder.read(aside) != stale:  # a live run re-locked between our read and the rename
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink()
            return False
        aside.unlink()
        return True
