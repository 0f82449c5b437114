"""One model on every process: BatchNorm statistics over the global batch (`SyncBatchNorm`), buffers copied
from rank 0 before a model is evaluated or exported, and DeepSpeed's fp32 master weights gathered for export.

DDP keeps parameters equal and copies rank 0's buffers at each forward, but each rank then updates them with
its own batch; DeepSpeed never syncs buffers. With 8 faces per device each rank's BatchNorm statistics are
noisy and different: `SyncBatchNorm` normalises with the statistics of the whole global batch, and every
rank computes the same running statistics from the same reduced numbers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch of all processes.

    torch's `nn.SyncBatchNorm` refuses CPU tensors; this one works on any device (gloo or NCCL), so the
    CPU tests run the code a GPU cluster runs. Each rank's (mean, sum of squared deviations, count) go into
    its row of a (world, 2C+1) matrix, one differentiable all-reduce fills every row on every rank (the
    backward all-reduces the gradients), and each rank combines the rows identically (Chan's parallel
    variance). In eval mode, or alone, it is a plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1:
            return super().forward(x)
        channels, dims = x.shape[1], (0, 2, 3)
        xf = x.float()  # statistics in fp32 under bf16/fp16 weights
        count = x.numel() // channels
        mean = xf.mean(dims)
        m2 = (xf - mean[None, :, None, None]).square().sum(dims)
        local = torch.cat([mean, m2, mean.new_full((1,), float(count))])
        rank = dist.get_rank()
        rows = torch.stack([local if r == rank else torch.zeros_like(local) for r in range(world)])
        rows = dist_fn.all_reduce(rows)  # one non-zero term per element: exact, the same on every rank
        means, m2s, counts = rows[:, :channels], rows[:, channels : 2 * channels], rows[:, 2 * channels :]
        total = counts.sum()
        g_mean = (counts * means).sum(0) / total
        g_var = (m2s.sum(0) + (counts * (means - g_mean).square()).sum(0)) / total
        if self.track_running_stats:
            self._update_running_stats(g_mean.detach(), g_var.detach() * total / (total - 1))
        y = (xf - g_mean[None, :, None, None]) * torch.rsqrt(g_var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight.float()[None, :, None, None] + self.bias.float()[None, :, None, None]
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative average (a host read of the count, as in nn.BatchNorm2d).
        factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` as a `SyncBatchNorm` with the same parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(device=next(child.buffers()).device)
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module


def use_sync_batchnorm(setting: bool | str, num_processes: int) -> bool:
    """model.sync_batchnorm: "auto" is on when the run has several processes."""
    return num_processes > 1 if setting == "auto" else bool(setting)


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: every rank then evaluates and exports
    the same model. A no-op on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def deepspeed_fp32_state(engine) -> dict[str, torch.Tensor]:
    """The full state of a DeepSpeed engine's module with its fp32 master weights (not the bf16/fp16 copies
    the module computes with), on every rank. A collective under ZeRO: every rank must call it."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in engine.module.named_parameters():
        master = safe_get_full_fp32_param(param)
        state[name] = (master if master is not None else param).detach().float().cpu()
    for name, buffer in engine.module.named_buffers():
        state[name] = buffer.detach().cpu()
    return state
