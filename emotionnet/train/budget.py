"""`TimeBudget`: how many optimizer steps a run of `run.time_budget_min` minutes can take, planned after
the warm-up and planned again at every sync point (about once a second) from the measured pace.

The schedule's cosine ends on the planned step, so re-planning lets it follow the fraction of the budget
spent: a slow warm-up (first allocations, another job on the machine) no longer fixes a step count that
ends the run early, and a slower second half no longer overruns it. The clock is wall time from the
start of `Trainer.fit`, carried across resumes (`TrainerProgress.budget_spent_s`, saved with every
checkpoint); start-up and the final exports and tests are not counted.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# Validation costs about this fraction of a training step per image (forward only, larger batches: 0.3
# measured on a CPU); rounded up, so that the first plan, made before any validation ran, ends early
# rather than late. Later plans use the measured time of an epoch's end instead.
EVAL_COST_PER_IMAGE = 0.5


def steps_within_budget(
    budget_s: float,
    elapsed_s: float,
    steps_done: int,
    seconds_per_step: float,
    steps_per_epoch: int,
    eval_s: float,
    validated_now: bool = False,
) -> int:
    """How many optimizer steps fit in `budget_s`, `elapsed_s` into a run that has done `steps_done`
    steps at `seconds_per_step`, when every epoch, including a last partial one, ends with a validation
    of `eval_s` seconds (`validated_now`: the one at `steps_done` has run). At least one more step, so
    that the schedule has an end."""
    validations_done = max(steps_done - (not validated_now), 0) // steps_per_epoch

    def cost(total: int) -> float:  # seconds from now to the end of a run of `total` steps
        validations = math.ceil(total / steps_per_epoch) - validations_done
        return (total - steps_done) * seconds_per_step + validations * eval_s

    # The largest total that fits (cost grows with it), by bisection.
    low, high = steps_done + 1, steps_done + 1 + math.ceil(max(budget_s - elapsed_s, 0) / seconds_per_step)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= budget_s - elapsed_s else (low, middle - 1)
    return low


@dataclass
class Pace:
    """What a plan is made from; several processes plan from the slowest rank's figures (max of each)."""

    seconds_per_step: float  # training only, epoch ends excluded
    epoch_end_s: float  # an epoch's end: validation, export, checkpoint
    spent_s: float  # of the budget, so far

    def as_list(self) -> list[float]:
        return [self.seconds_per_step, self.epoch_end_s, self.spent_s]


class TimeBudget:
    """Measures the pace of a time-budgeted run and plans its length in steps.

    Call `start` when training starts, `pause` when an epoch's training ends and `resume` once its
    validation and checkpoint are done. The training pace is measured over a window that starts at
    `start`, at `restart_window` (the trainer restarts it a quarter into the warm-up and again at the first
    plan, so that the warm-up's slowest steps drop out) and at every `resume`;
    `pace` reads it (the previous window's while the current one holds fewer than MIN_WINDOW_STEPS)
    and `plan` turns a (reduced) `Pace` into a step count.
    """

    MIN_WINDOW_STEPS = 20

    def __init__(self, minutes: float, steps_per_epoch: int, clock: Callable[[], float] = time.perf_counter):
        self.budget_s = minutes * 60
        self.steps_per_epoch = steps_per_epoch
        self.clock = clock
        self._origin = 0.0
        self._window = (0, 0.0)  # (step, time) the training pace is measured from
        self._paused_at = 0.0
        self._last_seconds_per_step: float | None = None  # the last window's, when one is too short
        self._epoch_ends_s: list[float] = []  # every epoch end's duration in this launch
        self._validated_step: int | None = None  # the step of the last epoch end

    def start(self, step: int, spent_s: float) -> None:
        now = self.clock()
        self._origin = now - spent_s
        self._window = (step, now)

    def spent_s(self) -> float:
        return self.clock() - self._origin

    def restart_window(self, step: int) -> None:
        """Close the pace window (its pace stands in while the next one is short) and start another."""
        now = self.clock()
        if step > self._window[0]:
            self._last_seconds_per_step = self._seconds_per_step(step, now)
        self._window = (step, now)

    def pause(self, step: int) -> None:
        self.restart_window(step)
        self._paused_at = self._window[1]

    def resume(self, step: int) -> None:
        now = self.clock()
        self._epoch_ends_s.append(now - self._paused_at)
        self._validated_step = step
        self._window = (step, now)

    @property
    def epoch_end_s(self) -> float | None:
        """The median epoch end: one slow checkpoint write or a new best model's export would, as the
        last one, reserve its time for every epoch end to come and end the run early."""
        return statistics.median(self._epoch_ends_s) if self._epoch_ends_s else None

    def _seconds_per_step(self, step: int, now: float) -> float:
        window_step, window_time = self._window
        if step - window_step < self.MIN_WINDOW_STEPS and self._last_seconds_per_step is not None:
            return self._last_seconds_per_step
        return (now - window_time) / max(step - window_step, 1)

    def pace(self, step: int, epoch_end_in_steps: float) -> Pace:
        """The training pace, and the median epoch end's duration or, before any, an estimate worth
        `epoch_end_in_steps` training steps."""
        now = self.clock()
        seconds_per_step = self._seconds_per_step(step, now)
        if self.epoch_end_s is not None:
            epoch_end_s = self.epoch_end_s
        else:
            epoch_end_s = epoch_end_in_steps * seconds_per_step
        return Pace(seconds_per_step, epoch_end_s, now - self._origin)

    def plan(self, step: int, pace: Pace) -> int:
        """The step the run should end on, counting from `step`, at least one more."""
        return steps_within_budget(
            self.budget_s, pace.spent_s, step, pace.seconds_per_step, self.steps_per_epoch, pace.epoch_end_s,
            validated_now=step == self._validated_step,
        )  # fmt: skip
