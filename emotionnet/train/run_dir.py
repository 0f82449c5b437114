"""Where a run lives (`<output_dir>/<run_name>/`) and which checkpoint, if any, it resumes from."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from emotionnet.config.schema import RunConfig
from emotionnet.errors import UserError
from emotionnet.inference.export import ExportError, read_description
from emotionnet.run_layout import CHECKPOINTS, RunLayout, run_name_problem
from emotionnet.train.checkpoint import (
    CheckpointError,
    checkpoint_steps,
    latest_checkpoint,
    latest_valid_checkpoint,
    verify_checkpoint,
)
from emotionnet.train.progress import TrainerProgress

log = logging.getLogger(__name__)


class RunDirError(UserError):
    """A run directory or resume target that cannot be used as asked."""


@dataclass(frozen=True)
class ResolvedRun:
    name: str
    path: Path
    checkpoint: Path | None  # resume from here, or start fresh


def default_run_name(accelerator: Accelerator) -> str:
    """Readable and sortable: emotionnet-bf16-2p-20261125-101500."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"emotionnet-{accelerator.mixed_precision}-{accelerator.num_processes}p-{stamp}"


def check_output_dir(output_dir: str | Path) -> None:
    """RunDirError unless runs can be written under `output_dir`; creates nothing."""
    path = Path(output_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        if existing == path:
            with tempfile.TemporaryFile(dir=path):  # the real test (permission bits do not bind root)
                pass
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{existing} is not writable")
    except OSError as err:
        reason = err.strerror or str(err)
        raise RunDirError(f"run.output_dir {path} is not writable: {reason}") from None


def run_directory(cfg: RunConfig, accelerator: Accelerator) -> Path:
    """The run directory `cfg` asks for: that of the `run.resume` checkpoint, `run.run_name`, the run with
    the newest checkpoint (`run.resume=latest` without a name) or a new timestamped one."""
    output_dir = Path(cfg.output_dir)
    if cfg.resume not in (None, "latest"):
        checkpoint = Path(os.path.abspath(cfg.resume))
        if checkpoint.parent.name != CHECKPOINTS or not checkpoint.name.startswith("step_"):
            raise RunDirError(f"--resume {cfg.resume}: not a checkpoint directory (<run>/checkpoints/step_*)")
        run_path = checkpoint.parent.parent
        if not (output_dir.is_dir() and run_path.parent.is_dir() and run_path.parent.samefile(output_dir)):
            # The run's tracking store and neighbours are those of its own output directory.
            raise RunDirError(
                f"--resume {cfg.resume}: that run is not in run.output_dir {output_dir}; "
                f"pass run.output_dir={run_path.parent} to resume it"
            )
        if problem := run_name_problem(run_path.name):
            raise RunDirError(f"--resume {cfg.resume}: {problem}")
        return run_path
    name = cfg.run_name
    if cfg.resume == "latest" and name is None and output_dir.is_dir():
        candidates = [
            p
            for p in output_dir.iterdir()
            if not run_name_problem(p.name) and p.is_dir() and latest_checkpoint(p)
        ]
        if candidates:
            name = max(candidates, key=lambda p: latest_checkpoint(p).stat().st_mtime).name
    return output_dir / (name or default_run_name(accelerator))


def resume_checkpoint(cfg: RunConfig, run_path: Path, num_processes: int) -> Path | None:
    """The verified checkpoint of `run_path` to resume from (None: start fresh), as `run.resume` asks."""
    if cfg.resume not in (None, "latest"):
        checkpoint = Path(os.path.abspath(cfg.resume))
        try:
            verify_checkpoint(checkpoint, num_processes)
        except CheckpointError as err:
            raise RunDirError(f"--resume {cfg.resume}: cannot resume from this checkpoint: {err}") from None
        return checkpoint
    steps = checkpoint_steps(run_path)
    if cfg.resume is None:
        if steps:
            raise RunDirError(
                f"run directory {run_path} already has checkpoints; pass --resume latest to continue it "
                "or choose another --run_name"
            )
        return None
    if not steps:
        log.warning("--resume latest: %s has no checkpoint; starting a fresh run there", run_path)
        return None
    checkpoint = latest_valid_checkpoint(run_path, num_processes)
    if checkpoint is None:
        raise RunDirError(
            f"--resume latest: none of the {len(steps)} checkpoints in {run_path / CHECKPOINTS} can be resumed "
            "(the warnings above say why); pass --resume <checkpoint> or choose another --run_name"
        )
    return checkpoint


def refuse_links(run_path: Path) -> None:
    """A run directory, or a directory a run writes or prunes in it, planted as a symbolic link would be
    written and pruned through (anywhere the link points): refused before anything is written."""
    layout = RunLayout(run_path)
    paths = [run_path, layout.checkpoints, layout.snapshots, layout.best, layout.final, layout.reports]
    for parent in (layout.checkpoints, layout.snapshots):
        paths += sorted(parent.iterdir()) if parent.is_dir() else []
    if link := next((path for path in paths if path.is_symlink()), None):
        raise RunDirError(
            f"{link} is a symbolic link: a run writes and prunes only real directories inside its output "
            "directory; replace the link with a directory (or point run.output_dir elsewhere)"
        )


def exported_step(export: Path) -> int | None:
    """The training step an export of this run was taken at (its metadata), or None when it is missing or
    unreadable."""
    try:
        step = read_description(export).metadata.get("step")
    except ExportError:
        return None
    return step if isinstance(step, int) else None


def forget_a_best_not_exported(progress: TrainerProgress, best: Path) -> None:
    """After a resume: when `best` is not the export of the checkpoint's best step (it came from work being
    redone, or is gone), the next validation exports afresh rather than compete with a score whose model
    is not there."""
    if progress.best_step >= 0 and exported_step(best) != progress.best_step:
        log.warning(
            "%s is not the export of step %d: the next validation replaces it", best, progress.best_step
        )
        progress.best_accuracy = -1.0
