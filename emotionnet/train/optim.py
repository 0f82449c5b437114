"""Optimizers (AdamW, SGD with Nesterov momentum) with weight decay on weights only, and the learning-rate
schedule: linear warm-up, then one cosine over the whole run or cosine cycles with warm restarts.

The run's length is epochs, steps (`schedule.budget_steps`) or wall-clock minutes (`run.time_budget_min`).
For minutes the trainer plans the number of steps that fit (`emotionnet/train/budget.py`) after the warm-up
and again at every sync point, and hands it to the schedule, whose attributes are saved with the
scheduler's state, so a resumed run continues the same curve.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from emotionnet.config.schema import OptimConfig, ScheduleConfig

log = logging.getLogger(__name__)

WARMUP_START_FACTOR = 1e-3  # the first step's learning rate, as a fraction of the peak


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices/kernels decay; norms, biases, gains, positional embeddings and class tokens don't."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        is_embedding = "embed" in leaf or "token" in leaf
        (no_decay if param.ndim <= 1 or is_embedding else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The peak learning rate at this global batch: optim.lr scaled by optim.lr_scaling from
    optim.reference_batch."""
    ratio = global_batch / cfg.reference_batch
    return cfg.lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]


def create_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, fused: bool = False, lr: float | None = None
) -> torch.optim.Optimizer:
    """`fused`: AdamW's fused implementation (CUDA and CPU; the Trainer asks for it except under DeepSpeed on
    a CPU). `lr`: the peak rate (`scaled_lr`); None: optim.lr as it stands."""
    groups = param_groups(model, cfg.weight_decay)
    lr = cfg.lr if lr is None else lr
    if cfg.name == "sgd":
        # Coupled (L2) weight decay, as in the SGD recipes its values come from (e.g. 5e-4).
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(
        groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True if fused else None
    )


class SkippedSteps:
    """Optimizer steps skipped on an fp16 overflow, counted on the device (no host sync per step).

    Accelerate reports a skip when the grad scaler did not call `optimizer.step`; a fused optimizer is always
    called (it skips inside its kernel when the scaler found Inf/NaN), so no skip would ever be counted. The
    scaler lowers its scale only after such a step: compare the scale across the step. Without a scaler
    (DeepSpeed's fp16 keeps its own) the optimizer's report is counted.
    """

    def __init__(self, scaler: torch.amp.GradScaler | None, device: torch.device) -> None:
        self.scaler = scaler
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self._scale_before: torch.Tensor | None = None

    def before_step(self) -> None:
        # `_scale`, not `get_scale()`: the latter reads the scale back to the host.
        if self.scaler is not None and self.scaler._scale is not None:
            self._scale_before = self.scaler._scale.clone()

    def after_step(self, step_was_skipped: bool) -> None:
        """`step_was_skipped`: the optimizer's own report, used when there is no scaler."""
        if self._scale_before is not None:
            self.count += self.scaler._scale < self._scale_before
            self._scale_before = None
        elif step_was_skipped:
            self.count += 1

    def take(self) -> int:
        """The skips since the last call (a host sync: at sync points only)."""
        taken = int(self.count.item())
        self.count.zero_()
        return taken


class LRSchedule:
    """The learning-rate multiplier at optimizer step `step` (a LambdaLR function).

    Linear warm-up from WARMUP_START_FACTOR to 1 over `warmup_steps`, then cosine annealing to
    `min_factor`: "cosine" once, ending at `total_steps`; "restarts" in cycles of `cycle_steps`, each
    `cycle_mult` times longer than the one before. While `total_steps` is None (a time-budgeted run
    before its calibration) the rate stays at its peak after the warm-up.

    LambdaLR saves this object's attributes with the scheduler's state and restores them on resume.
    """

    def __init__(
        self,
        name: str,
        warmup_steps: int,
        min_factor: float,
        total_steps: int | None = None,
        cycle_steps: int = 1,
        cycle_mult: int = 1,
    ) -> None:
        self.name = name
        self.warmup_steps = warmup_steps
        self.min_factor = min_factor
        self.total_steps = total_steps
        self.cycle_steps = cycle_steps
        self.cycle_mult = cycle_mult

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * step / self.warmup_steps
        t = step - self.warmup_steps
        if self.name == "restarts":
            length = self.cycle_steps
            while t >= length:
                t -= length
                length *= self.cycle_mult
        elif self.total_steps is None:
            return 1.0
        else:
            length = max(self.total_steps - self.warmup_steps, 1)
            t = min(t, length)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t / length))


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int | None
) -> LambdaLR:
    """The schedule as a LambdaLR stepped once per optimizer step; `total_steps` None: fixed later."""
    base_lr = optimizer.param_groups[0]["lr"]
    schedule = LRSchedule(
        cfg.name,
        max(cfg.warmup_steps, 0),
        min(cfg.min_lr / base_lr, 1.0) if base_lr > 0 else 0.0,
        total_steps,
        cycle_steps=max(1, round(cfg.cycle_epochs * steps_per_epoch)),
        cycle_mult=cfg.cycle_mult,
    )
    return LambdaLR(optimizer, schedule)


def cycle_end_steps(cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int) -> list[int]:
    """Optimizer steps at which a cosine cycle reaches `min_lr` (warm-up excluded), up to `total_steps`."""
    cycle_steps = max(1, round(cfg.cycle_epochs * steps_per_epoch))
    ends, end = [], max(cfg.warmup_steps, 0)
    while end + cycle_steps <= total_steps:
        end += cycle_steps
        ends.append(end)
        cycle_steps *= cfg.cycle_mult
    return ends


def snapshot_steps(cfg: ScheduleConfig, steps_per_epoch: int, total_steps: float, warn: bool) -> list[int]:
    """Where a snapshot ensemble keeps its members (cycle ends); none when schedule.snapshot_ensemble is off."""
    if not cfg.snapshot_ensemble:
        return []
    steps = cycle_end_steps(cfg, steps_per_epoch, total_steps)
    if not steps and warn:
        log.warning(
            "schedule.snapshot_ensemble is on but no cosine cycle ends within the run's %s steps "
            "(warm-up %d + cycle_epochs %s x %d steps): no snapshots will be kept",
            total_steps,
            cfg.warmup_steps,
            cfg.cycle_epochs,
            steps_per_epoch,
        )
    return steps
