"""Transformer encoder over the feature map's positions, read out through a class token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TransformerEncoder(nn.Module):
    """(B, C, H, W) -> (B, d_model): project channels, add 2-D positional embeddings and a class token,
    run `depth` pre-norm `nn.TransformerEncoderLayer`s, return the normalized class token.

    The positional embeddings are a learnable (grid x grid) map for the configured input size; a
    different map size (another input resolution) gets them bicubically interpolated, ViT-style.
    """

    def __init__(
        self,
        in_channels: int,
        grid: int,
        d_model: int = 192,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"transformer heads ({heads}) must divide d_model ({d_model})")
        self.proj = nn.Linear(in_channels, d_model)
        self.pos_embed = nn.Parameter(torch.empty(1, d_model, grid, grid))
        self.cls_token = nn.Parameter(torch.empty(1, 1, d_model))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=round(d_model * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors only apply to post-norm layers with padding masks; off avoids the warning.
        self.layers = nn.TransformerEncoder(
            layer, depth, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )

    def positional_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, H*W, d_model) embeddings for an H x W map."""
        pos = self.pos_embed
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = self.proj(x.flatten(2).transpose(1, 2)) + self.positional_embedding(h, w)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.layers(torch.cat([cls, tokens], dim=1))[:, 0]
