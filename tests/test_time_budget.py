"""A time-budgeted run ends on time: planned after the warm-up, re-planned at every epoch end, so a slow
warm-up or a slower second half neither cuts the run short nor overruns it."""

from __future__ import annotations

import time

import pytest

from emotionnet.cli.train import run as train_run
from emotionnet.train.budget import TimeBudget
from emotionnet.train.trainer import Trainer
from tests.training_utils import REPO_ROOT, prepared_synthetic

TOLERANCE = 0.05  # the promise: the run ends within 5% of its budget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    seconds_per_step, epoch_end_s=lambda step: 10.0, budget_min=10.0, steps_per_epoch=100, calibration=50
):
    """The Trainer's use of TimeBudget on a fake clock, with a sync point every 5 steps: (seconds the run
    took, seconds a run of the step count planned after the warm-up would have taken)."""
    clock = FakeClock()
    budget = TimeBudget(budget_min, steps_per_epoch, clock)
    budget.start(0, spent_s=0.0)
    step, total = 0, None
    while total is None or step < total:
        step += 1
        clock.now += seconds_per_step(step)
        if total is None:
            if step == calibration // 4:
                budget.restart_window(step)
            if step >= calibration:
                total = first_plan = budget.plan(step, budget.pace(step, epoch_end_in_steps=20))
                budget.restart_window(step)
        elif step % 5 == 0 and step < total:
            total = budget.plan(step, budget.pace(step, epoch_end_in_steps=20))
        if step % steps_per_epoch == 0 or step == total:
            budget.pause(step)
            clock.now += epoch_end_s(step)
            budget.resume(step)
            if step < total:
                total = budget.plan(step, budget.pace(step, epoch_end_in_steps=20))
    one_plan_s = sum(seconds_per_step(s) for s in range(1, first_plan + 1))
    one_plan_s += sum(
        epoch_end_s(min(s, first_plan))
        for s in range(steps_per_epoch, first_plan + steps_per_epoch, steps_per_epoch)
    )
    return clock.now, one_plan_s


@pytest.mark.parametrize(
    ("case", "seconds_per_step"),
    [
        ("slow warm-up", lambda step: 1.5 if step <= 50 else 0.5),
        ("slower second half", lambda step: 0.5 if step <= 400 else 0.8),
        ("steady", lambda step: 0.5),
    ],
)
def test_replanning_ends_the_run_within_five_percent_of_its_budget(case, seconds_per_step):
    took, one_plan_s = simulate(seconds_per_step)
    assert abs(took - 600) <= TOLERANCE * 600, (case, took)
    if case != "steady":  # the plan fixed once after the warm-up misses by far more
        assert abs(one_plan_s - 600) > 2 * TOLERANCE * 600, (case, one_plan_s)


def test_one_slow_epoch_end_does_not_end_the_run_early():
    """The epoch end at step 800 (a slow disk, a new best model's export) takes 60 s instead of 10: the
    run's last epoch end is planned at the usual 10 s, not at 60 (which ended the run 50 s early)."""
    took, _ = simulate(lambda step: 0.5, epoch_end_s=lambda step: 60.0 if step == 800 else 10.0)
    assert abs(took - 600) <= TOLERANCE * 600, took


def test_a_plan_made_just_after_an_epoch_end_does_not_count_that_epoch_end_again():
    clock = FakeClock()
    budget = TimeBudget(10, 100, clock)
    budget.start(0, spent_s=0.0)
    clock.now += 50  # 100 steps at 0.5 s
    budget.pause(100)
    clock.now += 10
    budget.resume(100)
    pace = budget.pace(100, epoch_end_in_steps=20)
    # 540 s left: 900 more steps (450 s) and the ends of epochs at steps 200 ... 1000 (9 x 10 s). Counting
    # the epoch end at step 100 again left room for 880 steps (980).
    assert budget.plan(100, pace) == 1000


def test_a_resume_counts_the_budget_spent_before_it():
    clock = FakeClock()
    budget = TimeBudget(10, 100, clock)
    budget.start(500, spent_s=300.0)
    clock.now += 30
    assert budget.spent_s() == pytest.approx(330.0)
    budget.pause(560)
    clock.now += 10
    budget.resume(560)
    pace = budget.pace(560, epoch_end_in_steps=20)
    assert (pace.seconds_per_step, pace.epoch_end_s, pace.spent_s) == pytest.approx((0.5, 10.0, 340.0))
    # 260 s left at 0.5 s a step and 10 s per epoch end: 420 more steps, then the ends of epochs at
    # steps 600, 700, 800, 900 and 980.
    assert budget.plan(560, pace) == 980


@pytest.mark.slow
@pytest.mark.serial
def test_a_slow_warm_up_does_not_end_the_real_trainer_early(tmp_path, monkeypatch):
    """The real Trainer with its warm-up made 6x slower by a sleep: its fit ends within 5% of the budget."""
    data = prepared_synthetic(tmp_path / "data", rows=1200, seed=3)
    slow, fast = 0.3, 0.05
    real_step, real_fit = Trainer.train_step, Trainer.fit
    took = {}

    def train_step(self, batch):
        time.sleep(slow if self.progress.step < self.cfg.schedule.warmup_steps else fast)
        return real_step(self, batch)

    def fit(self):
        start = time.perf_counter()
        try:
            return real_fit(self)
        finally:
            took["fit"] = time.perf_counter() - start

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(Trainer, "fit", fit)
    budget_s = 60
    code, trainer = train_run(
        ["--config", str(REPO_ROOT / "tests/configs/tiny.yaml"), f"data.data_dir={data}",
         f"run.output_dir={tmp_path / 'out'}", "tracking.enabled=false", "schedule.warmup_steps=20",
         f"run.time_budget_min={budget_s / 60}", "checkpoint.every_steps=100000", "run.num_threads=1"]
    )  # fmt: skip
    assert code == 0
    assert abs(took["fit"] - budget_s) <= TOLERANCE * budget_s, took
    # What the warm-up's pace alone promised: about a third of the steps that were taken.
    assert trainer.progress.step > 2 * (budget_s - 20 * slow) / (slow + 0.01)
    assert trainer.progress.budget_spent_s == pytest.approx(took["fit"], abs=2.0)
