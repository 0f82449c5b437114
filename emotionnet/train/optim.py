"""AdamW with decoupled weight decay on weights only, and the warm-up + warm-restart cosine schedule."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LinearLR, LRScheduler, SequentialLR

from emotionnet.config.schema import OptimConfig, ScheduleConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices/kernels decay; norms, biases, positional embeddings and class tokens don't."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        is_embedding = "embed" in leaf or "token" in leaf
        (no_decay if param.ndim <= 1 or is_embedding else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: torch.nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """`fused`: AdamW's single-kernel CUDA implementation (the Trainer asks for it on CUDA devices)."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=True if fused else None,
    )


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int
) -> LRScheduler:
    """Linear warm-up for `warmup_steps`, then CosineAnnealingWarmRestarts stepped per optimizer step."""
    cycle_steps = max(1, round(cfg.cycle_epochs * steps_per_epoch))
    cosine = CosineAnnealingWarmRestarts(
        optimizer, T_0=cycle_steps, T_mult=cfg.cycle_mult, eta_min=cfg.min_lr
    )
    if cfg.warmup_steps <= 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=cfg.warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[cfg.warmup_steps])


def cycle_end_steps(cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int) -> list[int]:
    """Optimizer steps at which a cosine cycle reaches `min_lr` (warm-up excluded), up to `total_steps`."""
    cycle_steps = max(1, round(cfg.cycle_epochs * steps_per_epoch))
    ends, end = [], max(cfg.warmup_steps, 0)
    while end + cycle_steps <= total_steps:
        end += cycle_steps
        ends.append(end)
        cycle_steps *= cfg.cycle_mult
    return ends
