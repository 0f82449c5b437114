"""Where a run lives (`<output_dir>/<run_name>/`) and which checkpoint, if any, it resumes from."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from emotionnet.config.schema import RunConfig
from emotionnet.run_layout import CHECKPOINTS
from emotionnet.train.checkpoint import latest_checkpoint


class RunDirError(ValueError):
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


def resolve_run(cfg: RunConfig, accelerator: Accelerator) -> ResolvedRun:
    """Apply `run.resume` (None, 'latest' or a checkpoint path) to pick the run directory and checkpoint."""
    output_dir = Path(cfg.output_dir)
    if cfg.resume not in (None, "latest"):
        checkpoint = Path(cfg.resume)
        if not (checkpoint.is_dir() and checkpoint.parent.name == CHECKPOINTS):
            raise RunDirError(f"--resume {checkpoint}: not a checkpoint directory (<run>/checkpoints/step_*)")
        run_path = checkpoint.parent.parent
        return ResolvedRun(run_path.name, run_path, checkpoint)

    name = cfg.run_name
    if cfg.resume == "latest" and name is None and output_dir.is_dir():
        candidates = [p for p in output_dir.iterdir() if p.is_dir() and latest_checkpoint(p)]
        if candidates:
            name = max(candidates, key=lambda p: latest_checkpoint(p).stat().st_mtime).name
    name = name or default_run_name(accelerator)
    run_path = output_dir / name
    checkpoint = latest_checkpoint(run_path)
    if checkpoint is not None and cfg.resume is None:
        raise RunDirError(
            f"run directory {run_path} already has checkpoints; pass --resume latest to continue it "
            "or choose another --run_name"
        )
    return ResolvedRun(name, run_path, checkpoint)
