"""The recipe's levers: optimizer choice, the learning-rate schedule (one cosine, warm restarts, a step or
wall-clock budget), the loss (label smoothing, square-root class weights, logit adjustment)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LinearLR, SequentialLR

from emotionnet.cli.train import run as train_run
from emotionnet.config.loader import ConfigError, load
from emotionnet.config.schema import LossConfig, OptimConfig, ScheduleConfig, TrainConfig
from emotionnet.model.attention import LayerScale
from emotionnet.model.emotionnet import EmotionNet, ModelConfig
from emotionnet.train.budget import steps_within_budget
from emotionnet.train.loss import Criterion, class_weights
from emotionnet.train.optim import LRSchedule, create_optimizer, create_scheduler
from tests.training_utils import REPO_ROOT, prepared_synthetic

TINY = ModelConfig(backbone_stages=3, d_model=32, depth=1, heads=2, spatial_heads=2, head_hidden=32)
FER_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]  # FER2013 Training, per class


def lrs(scheduler, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        values.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def test_one_cosine_warms_up_then_ends_at_min_lr_on_the_last_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr=1e-3)
    values = lrs(create_scheduler(optimizer, cfg, steps_per_epoch=7, total_steps=50), 51)
    assert values[0] == pytest.approx(1e-4) and values[10] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(values[:10], values[1:11], strict=True))  # warm-up rises
    assert all(a > b for a, b in zip(values[10:50], values[11:51], strict=True))  # then only falls
    assert values[30] == pytest.approx(1e-3 + (0.1 - 1e-3) / 2)  # half-way down at mid-cosine
    assert values[50] == pytest.approx(1e-3)


def test_warm_restarts_match_torch_warmup_then_cosine_annealing_warm_restarts():
    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.SGD(params, lr=0.1)
    cfg = ScheduleConfig(name="restarts", warmup_steps=5, cycle_epochs=2, cycle_mult=2, min_lr=1e-3)
    theirs = torch.optim.SGD(params, lr=0.1)
    reference = SequentialLR(
        theirs,
        [LinearLR(theirs, 1e-3, 1.0, total_iters=5), CosineAnnealingWarmRestarts(theirs, 6, 2, 1e-3)],
        milestones=[5],
    )
    ours_lr = lrs(create_scheduler(ours, cfg, steps_per_epoch=3, total_steps=None), 60)
    assert ours_lr == pytest.approx(lrs(reference, 60))


def test_time_budgeted_schedule_holds_its_peak_until_its_length_is_fixed():
    schedule = LRSchedule("cosine", warmup_steps=4, min_factor=0.0)
    assert [schedule(s) for s in (4, 50, 5000)] == [1.0, 1.0, 1.0]
    schedule.total_steps = 14
    assert schedule(9) == pytest.approx(0.5) and schedule(14) == 0.0 and schedule(20) == 0.0


def test_steps_within_budget_counts_every_validation_and_leaves_at_least_one_step():
    # 100 s left, 1 s a step, an epoch of 30 steps ends with a 5 s validation.
    total = steps_within_budget(110, 10, steps_done=10, seconds_per_step=1.0, steps_per_epoch=30, eval_s=5)
    validations = math.ceil(total / 30)
    assert (total - 10) * 1.0 + validations * 5 <= 100 < (total + 1 - 10) + math.ceil((total + 1) / 30) * 5
    assert steps_within_budget(60, 61, 10, 1.0, 30, 5) == 11  # over budget already: one more step


def test_sgd_uses_nesterov_momentum_and_never_decays_gains_norms_or_biases():
    model = EmotionNet(TINY)
    optimizer = create_optimizer(model, OptimConfig(name="sgd", lr=0.05, weight_decay=5e-4, momentum=0.8))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.8
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    gains = [m.gamma for m in model.modules() if isinstance(m, LayerScale)]
    assert gains and not any(id(g) in decayed for g in gains)
    assert isinstance(create_optimizer(model, OptimConfig()), torch.optim.AdamW)


def test_class_weights_balanced_and_square_root_average_one_per_sample():
    counts = torch.tensor(FER_COUNTS, dtype=torch.float32)
    balanced = class_weights("balanced", FER_COUNTS)
    sqrt = class_weights("sqrt", FER_COUNTS)
    assert balanced == pytest.approx(counts.sum() / (7 * counts))  # unchanged from the first definition
    for weights in (balanced, sqrt):
        assert float((weights * counts).sum() / counts.sum()) == pytest.approx(1.0)
    assert float(sqrt[1] / sqrt[3]) == pytest.approx(math.sqrt(7215 / 436), rel=1e-5)  # Disgust vs Happy
    assert class_weights("none", FER_COUNTS) is None


def test_logit_adjustment_trains_on_logits_shifted_by_the_log_prior():
    logits, targets = torch.randn(16, 7), torch.arange(16) % 7
    loss = Criterion(LossConfig(label_smoothing=0.1, logit_adjustment=1.0), FER_COUNTS)(logits, targets)
    prior = torch.tensor(FER_COUNTS, dtype=torch.float32) / sum(FER_COUNTS)
    assert loss == pytest.approx(float(F.cross_entropy(logits + prior.log(), targets, label_smoothing=0.1)))
    plain = Criterion(LossConfig(label_smoothing=0.0), FER_COUNTS)(logits, targets)
    assert plain == pytest.approx(float(F.cross_entropy(logits, targets)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule.snapshot_ensemble=true"], "snapshot_ensemble needs cycles to snapshot"),
        (["run.time_budget_min=5", "schedule.name=restarts"], "needs schedule.name=cosine"),
        (["run.time_budget_min=5", "schedule.budget_steps=100"], "not both"),
        (["run.time_budget_min=0"], "run.time_budget_min must be > 0"),
        (["schedule.budget_steps=0"], "schedule.budget_steps must be at least 1"),
        (["optim.name=lion"], "'lion' is not one of"),
        (["loss.class_weights=inverse"], "'inverse' is not one of"),
        (["loss.label_smoothing=1.0"], r"loss.label_smoothing must be in \[0, 1\)"),
        (["loss.logit_adjustment=-1"], "loss.logit_adjustment must be >= 0"),
    ],
)
def test_bad_lever_settings_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(TrainConfig, None, overrides)


@pytest.mark.slow
def test_a_time_budgeted_run_resumes_its_schedule_and_the_budget_it_has_spent(tmp_path):
    """A budgeted run stopped early saves its planned length and the minutes it spent; resumed, it starts
    from that plan, counts those minutes, and ends its cosine at min_lr."""
    data = prepared_synthetic(tmp_path / "data", rows=300, seed=6)
    common = ["--config", str(REPO_ROOT / "tests/configs/tiny.yaml"), f"data.data_dir={data}",
              f"run.output_dir={tmp_path / 'out'}", "tracking.enabled=false", "schedule.warmup_steps=20",
              "--run_name", "budget", "run.time_budget_min=0.5", "run.num_threads=1"]  # fmt: skip
    code, first = train_run([*common, "run.max_steps=22"])
    assert code == 0 and first.progress.step == 22
    planned = first.parts.lr_schedule.total_steps
    assert planned is not None and planned > 22
    checkpoint = next((tmp_path / "out" / "budget" / "checkpoints").glob("step_*"))
    scheduler_state = torch.load(checkpoint / "scheduler.bin", weights_only=True)
    assert scheduler_state["lr_lambdas"][0]["total_steps"] == planned  # saved with the checkpoint
    spent = first.progress.budget_spent_s
    assert 0 < spent < 30

    code, resumed = train_run([*common, "--resume", "latest"])
    assert code == 0 and resumed.progress.step > 22
    assert resumed.progress.budget_spent_s > spent  # carried on from the checkpoint, not from zero
    assert resumed.parts.lr_schedule.total_steps == resumed.progress.step  # the last plan is where it ended
    assert resumed.parts.scheduler.get_last_lr()[0] == pytest.approx(
        resumed.cfg.schedule.min_lr
    )  # cosine ran out
