"""Attention over the backbone's feature map: which channels (ChannelAttention) and which regions
(SpatialSelfAttention), and the LayerScale gain that lets each start as (near) identity."""

from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Per-channel gain on a residual branch (CaiT, Touvron et al. 2021), over the last dimension.

    Started small, the branch adds almost nothing at initialisation: a randomly initialised stage
    cannot scramble the features the stages before it deliver, and grows only as far as it helps.
    """

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def gain(dim: int, layer_scale: float | None) -> nn.Module:
    """A LayerScale of `dim` channels, or no gain at all (None: the branch starts at full strength)."""
    return nn.Identity() if layer_scale is None else LayerScale(dim, layer_scale)


class ChannelAttention(nn.Module):
    """CBAM channel gate: avg- and max-pooled descriptors -> shared bottleneck MLP -> per-channel scale.

    (B, C, H, W) -> (B, C, H, W). Max pooling next to SE's average keeps a strong local cue (an open
    mouth, raised brows) from being diluted over the whole face. Without `layer_scale` the scale is
    sigmoid(logits) (CBAM's gate, which halves every channel at initialisation); with it the scale is
    1 + gamma * tanh(logits), the identity at initialisation for a small gamma.
    """

    def __init__(self, channels: int, reduction: int = 8, layer_scale: float | None = None) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )
        self.gain = gain(channels, layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        if isinstance(self.gain, LayerScale):
            scale = 1 + self.gain(torch.tanh(logits))
        else:
            scale = torch.sigmoid(logits)
        return x * scale[:, :, None, None]


class SpatialSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions with a (gained) residual connection.

    (B, C, H, W) -> (B, C, H, W): every facial region can borrow evidence from every other one.
    """

    def __init__(
        self, channels: int, heads: int = 4, dropout: float = 0.0, layer_scale: float | None = None
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"spatial attention heads ({heads}) must divide the channel count ({channels})")
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, dropout=dropout, batch_first=True)
        self.gain = gain(channels, layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        q = self.norm(tokens)
        tokens = tokens + self.gain(self.attn(q, q, q, need_weights=False)[0])
        return tokens.transpose(1, 2).reshape(b, c, h, w)
