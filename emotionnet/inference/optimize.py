"""A loaded model made fast to run for inference only: BatchNorm folded into the convolutions, channels_last.

Both change only the order of floating-point operations: probabilities agree with the model as exported
within about 1e-6. What they gain on a 2-core CPU: docs/benchmarks.md, "Inference throughput (CPU)"
and "Inference levers (CPU)".
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in an nn.Sequential into that conv, in place.

    The BatchNorm becomes an Identity, so the layer indices (and the rest of the model) stay as they are.
    Eval mode only: the running statistics are baked into the conv's weights and bias.
    """
    assert not module.training, "BatchNorm can only be folded into an eval-mode model"
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
    return module


class InferenceModel(nn.Module):
    """An eval-mode model for inference only: BatchNorm folded, weights and inputs channels_last.

    The backbone is mostly depthwise and 1x1 convolutions, which oneDNN runs faster on channels_last
    tensors; folding saves a pass over every conv's output.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = fold_batchnorm(model.eval()).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))
