"""Counters of a training run that must survive a restart (saved as JSON with every checkpoint), and the
progress bar that shows them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

from tqdm.auto import tqdm

# Absent from checkpoints written before they existed: such a checkpoint resumes with their defaults.
ADDED_LATER = ("budget_spent_s", "validated_step", "logged_records")


@dataclass
class TrainerProgress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_accuracy: float = -1.0
    best_step: int = -1
    skipped_steps: int = 0  # fp16 steps the grad scaler skipped on overflow (logged as train/skipped_steps)
    budget_spent_s: float = 0.0  # of run.time_budget_min, at the checkpoint (emotionnet/train/budget.py)
    validated_step: int = -1  # the step of the last validation: a run killed before its last one redoes it
    logged_records: int = -1  # records in metrics.jsonl at the checkpoint (-1: unknown, cut by step instead)

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        expected = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        state = {**{key: getattr(self, key) for key in ADDED_LATER if key not in state}, **state}
        if set(state) != set(expected):
            raise ValueError(f"trainer progress has the keys {sorted(state)}, expected {sorted(expected)}")
        for key, kind in expected.items():
            if type(state[key]) is not kind:
                raise ValueError(f"trainer progress {key}={state[key]!r} is not a {kind.__name__}")
            setattr(self, key, state[key])


@contextmanager
def step_bar(total_steps: float, step: int, show: bool) -> Iterator[tqdm]:
    """The training steps' bar (no total while a time budget has not planned one yet)."""
    bar = tqdm(total=total_steps if total_steps < math.inf else None, initial=step, disable=not show,
               desc="train", dynamic_ncols=True, unit="step")  # fmt: skip
    try:
        yield bar
    finally:
        bar.close()  # before any error message, so it starts on a line of its own
