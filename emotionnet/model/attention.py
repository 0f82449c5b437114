"""Attention over the backbone's feature map: which channels (ChannelAttention) and which regions."""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """CBAM channel gate: avg- and max-pooled descriptors -> shared bottleneck MLP -> sigmoid -> scale.

    (B, C, H, W) -> (B, C, H, W). Max pooling next to SE's average keeps a strong local cue (an open
    mouth, raised brows) from being diluted over the whole face.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(logits)[:, :, None, None]


class SpatialSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions with a residual connection.

    (B, C, H, W) -> (B, C, H, W): every facial region can borrow evidence from every other one.
    """

    def __init__(self, channels: int, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"spatial attention heads ({heads}) must divide the channel count ({channels})")
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        q = self.norm(tokens)
        tokens = tokens + self.attn(q, q, q, need_weights=False)[0]
        return tokens.transpose(1, 2).reshape(b, c, h, w)
