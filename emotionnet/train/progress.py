"""Counters of a training run that must survive a restart (saved with every checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainerProgress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_accuracy: float = -1.0
    best_step: int = -1
    skipped_steps: int = 0  # fp16 steps the grad scaler skipped on overflow (logged as train/skipped_steps)

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
