"""Atomic, pruned training checkpoints through `accelerator.save_state` (works for DDP and DeepSpeed)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from emotionnet.run_layout import RunLayout

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints of a run, oldest first."""
    root = RunLayout(Path(run_dir)).checkpoints
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    steps = checkpoint_steps(run_dir)
    return RunLayout(Path(run_dir)).checkpoints / f"step_{steps[-1]:08d}" if steps else None


class CheckpointManager:
    """Checkpoints live in `<run_dir>/checkpoints/step_XXXXXXXX/`.

    Every rank writes into a hidden temp dir (DeepSpeed shards its state per rank); the main process
    renames it into place once all ranks are done, so a kill at any moment leaves either the previous
    complete checkpoint or the new one, never a partial one under a `step_*` name.
    """

    def __init__(self, run_dir: Path, accelerator: Accelerator, keep_last: int):
        self.root = RunLayout(Path(run_dir)).checkpoints
        self.accelerator = accelerator
        self.keep_last = max(1, keep_last)

    def save(self, step: int, protect: int | None = None) -> Path:
        """Save the full training state at `step`; keep the newest `keep_last` plus `protect` (the best)."""
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp_step_{step:08d}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune(protect)
        self.accelerator.wait_for_everyone()
        return final

    def path(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root.parent)

    def _prune(self, protect: int | None) -> None:
        for step in checkpoint_steps(self.root.parent)[: -self.keep_last]:
            if step != protect:
                shutil.rmtree(self.path(step), ignore_errors=True)
        for leftover in self.root.glob(".tmp_step_*"):
            shutil.rmtree(leftover, ignore_errors=True)
