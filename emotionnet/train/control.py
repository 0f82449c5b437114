"""`RunControl`: how long a run goes, and when and on what its ranks agree.

Between sync points the hot loop never waits on the device. At a sync point (about every AGREE_EVERY_S
seconds of training, and at every log, snapshot and checkpoint step) one all-reduce tells every rank
whether any rank saw a NaN/Inf loss (`NonFiniteLossError`), whether any got a stop signal (all stop
together), the slowest rank's step time (which sets the next sync point) and, in a time-budgeted run, the
slowest rank's pace, from which the run's length is planned again (`budget.TimeBudget`).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator

from emotionnet.config.schema import TrainConfig
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode
from emotionnet.train.budget import EVAL_COST_PER_IMAGE, Pace, TimeBudget
from emotionnet.train.components import global_batch
from emotionnet.train.optim import LRSchedule
from emotionnet.train.progress import TrainerProgress

log = logging.getLogger(__name__)

# Not every step: a sync point is a host sync and a collective. All ranks derive the same number of steps
# from the same reduced step time. One process acts on a stop request at the next step.
AGREE_EVERY_S = 1.0
# A time-budgeted run times its pace over the last three quarters of the warm-up (at least this many steps).
MIN_CALIBRATION_STEPS = 20


class NonFiniteLossError(UserError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""

    exit_code = ExitCode.NONFINITE


class StopDuringStartUp(KeyboardInterrupt):
    """A stop signal before training began: nothing to checkpoint, so the start-up ends at once (cleaning up
    as Ctrl-C does) and the command exits PREEMPTED: run it again, or `--resume latest`."""

    def __init__(self, signum: int):
        super().__init__(
            f"stopped by {signal.Signals(signum).name} during start-up, before any training step"
        )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGINT)


@contextmanager
def stop_signals_for_the_run() -> Iterator[None]:
    """For a run's life: until `StopRequest` takes over, a stop signal raises StopDuringStartUp (Ctrl-C stays
    KeyboardInterrupt); the caller's handlers are back afterwards."""

    def handle(signum: int, _frame) -> None:
        raise KeyboardInterrupt if signum == signal.SIGINT else StopDuringStartUp(signum)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopRequest:
    """SIGTERM, SIGUSR1, SIGHUP (a closed terminal) and a first SIGINT (Ctrl-C) set a flag; the loop acts on
    it at the next step (one process) or the next sync point (several: within about AGREE_EVERY_S seconds).
    A second SIGINT interrupts at once (KeyboardInterrupt: whatever was being written is removed)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


class SyncClock:
    """When the ranks next agree: every rank measures its own step time, the sync point reduces them to the
    slowest, and all derive the same next sync step from it."""

    def __init__(self, step: int):
        self.next_step = step + 1
        self._since = (step, time.perf_counter())

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def microseconds_per_step(self, step: int) -> int:
        since_step, since = self._since
        return int(1e6 * (time.perf_counter() - since) / max(1, step - since_step))

    def schedule(self, step: int, microseconds_per_step: int) -> None:
        if step > self._since[0]:  # the same on every rank: steps advance in lockstep
            self.next_step = step + max(1, int(AGREE_EVERY_S * 1e6) // max(1, microseconds_per_step))
        self._since = (step, time.perf_counter())


class RunControl:
    """The run's length (fixed, or planned from a time budget), stop signals and NaN/Inf agreement."""

    def __init__(
        self,
        cfg: TrainConfig,
        accelerator: Accelerator,
        progress: TrainerProgress,
        lr_schedule: LRSchedule,
        steps_per_epoch: int,
        validation_rows: int,
        last_checkpoint: Callable[[], Path | None],
    ):
        self.accelerator = accelerator
        self.progress = progress
        self.lr_schedule = lr_schedule
        self.steps_per_epoch = steps_per_epoch
        self.last_checkpoint = last_checkpoint
        self.budget_min = cfg.run.time_budget_min
        self.max_steps = cfg.run.max_steps or math.inf
        self.stop = StopRequest()
        # run.max_steps stops the run early without reshaping its schedule.
        self.total_steps = min(lr_schedule.total_steps or math.inf, self.max_steps)
        self.budget = TimeBudget(self.budget_min, steps_per_epoch) if self.budget_min else None
        self.calibration_step = max(cfg.schedule.warmup_steps, MIN_CALIBRATION_STEPS)
        self.validation_steps = validation_rows / global_batch(cfg, accelerator.num_processes)
        self.on_plan: Callable[[int], None] = lambda total_steps: None

    @property
    def finished(self) -> bool:
        return self.progress.step >= self.total_steps

    def restore_schedule_length(self, schedule_steps: int | None) -> None:
        """After a resume: a time-budgeted run keeps its last planned step count (so the resumed run
        continues the same curve) until its next sync point re-plans it with the budget it has left; any
        other run takes this launch's length (`schedule_steps`)."""
        if self.budget is None:
            self.lr_schedule.total_steps = schedule_steps
        if self.lr_schedule.total_steps is not None:
            self.total_steps = min(self.lr_schedule.total_steps, self.max_steps)

    def start(self) -> None:
        step = self.progress.step
        self.clock = SyncClock(step)
        if self.budget is not None:
            self.budget.start(step, self.progress.budget_spent_s)
        device = self.accelerator.device
        self.nonfinite_at = torch.full((), -1, dtype=torch.long, device=device)
        self.device_step = torch.full((), step, dtype=torch.long, device=device)  # no host copy per step

    def after_step(self, loss: torch.Tensor) -> None:
        """Note a NaN/Inf loss on the device (no sync); plan a time-budgeted run at the warm-up's end."""
        self.device_step += 1
        self.nonfinite_at = torch.where(
            ~torch.isfinite(loss.detach()) & (self.nonfinite_at < 0), self.device_step, self.nonfinite_at
        )
        if self.budget is not None and self.lr_schedule.total_steps is None:
            self._calibrate()

    def sync_due(self, work_due: bool) -> bool:
        """A sync point: the clock says so, or the step logs or saves (`work_due`), or one process was
        asked to stop."""
        alone_and_stopped = self.accelerator.num_processes == 1 and self.stop.requested
        return work_due or alone_and_stopped or self.clock.due(self.progress.step)

    def agree(self) -> bool:
        """One collective: raise NonFiniteLossError if any rank saw a NaN/Inf loss; True if any rank got a
        stop signal. Schedules the next sync point and re-plans a budgeted run from the slowest rank."""
        device = self.accelerator.device
        local = [
            self.nonfinite_at.float(),
            torch.tensor(float(self.stop.requested), device=device),
            torch.tensor(float(self.clock.microseconds_per_step(self.progress.step)), device=device),
        ]
        replan = self.budget is not None and self.lr_schedule.total_steps is not None
        if replan:
            local += list(self._pace())
        first, stop, microseconds_per_step, *pace = self.accelerator.reduce(
            torch.stack(local), reduction="max"
        ).tolist()
        self.clock.schedule(self.progress.step, int(microseconds_per_step))
        if first >= 0:
            raise NonFiniteLossError(
                f"loss became NaN/Inf at step {int(first)}; last good checkpoint: "
                f"{self.last_checkpoint() or 'none saved yet'}"
            )
        if replan and not self.finished:
            self._plan(Pace(*pace))
        return stop > 0

    @contextmanager
    def epoch_end(self) -> Iterator[None]:
        """An epoch's end (validation, export, checkpoint): timed apart from the training pace."""
        if self.budget is not None:
            self.budget.pause(self.progress.step)
        yield
        if self.budget is not None:
            self.budget.resume(self.progress.step)

    def record_budget(self) -> None:
        """Before a checkpoint: the minutes spent so far go with it."""
        if self.budget is not None:
            self.progress.budget_spent_s = self.budget.spent_s()

    def _calibrate(self) -> None:
        """Before the first plan: time the warm-up's steps (from a quarter of the way in: the first steps
        are slower), then plan the run's length."""
        step = self.progress.step
        if step == self.calibration_step // 4:
            self.budget.restart_window(step)
        if step >= self.calibration_step:
            self._plan(Pace(*self.accelerator.reduce(self._pace(), reduction="max").tolist()))
            self.budget.restart_window(step)

    def _pace(self) -> torch.Tensor:
        """This rank's pace figures (`budget.Pace`), to be reduced to the slowest rank's."""
        epoch_end_in_steps = EVAL_COST_PER_IMAGE * self.validation_steps
        pace = self.budget.pace(self.progress.step, epoch_end_in_steps=epoch_end_in_steps)
        return torch.tensor(pace.as_list(), device=self.accelerator.device)

    def _plan(self, pace: Pace) -> None:
        """How many steps fit in the budget; every rank plans from the same reduced pace, so all plan the
        same count. It is saved with the schedule in every checkpoint."""
        first_plan = self.lr_schedule.total_steps is None
        total = self.budget.plan(self.progress.step, pace)
        self.lr_schedule.total_steps = total
        self.total_steps = min(total, self.max_steps)
        self.on_plan(self.total_steps)
        if first_plan and self.accelerator.is_main_process:
            log.info(
                "time budget %.1f min: %.3f s/step, %.0f s per epoch end -> %d steps (%.1f epochs), "
                "re-planned at every sync point",
                self.budget_min,
                pace.seconds_per_step,
                pace.epoch_end_s,
                total,
                total / self.steps_per_epoch,
            )
