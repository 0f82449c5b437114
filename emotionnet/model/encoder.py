"""Transformer encoder over the feature map's positions, read out through a class token or added to
the pooled CNN features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emotionnet.model.attention import gain

READOUTS = ("cls", "pooled")


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (attention, then a GELU MLP), each branch behind an optional LayerScale.

    The parameter names are nn.TransformerEncoderLayer's, so models exported before LayerScale existed
    load unchanged.
    """

    def __init__(
        self, d_model: int, heads: int, mlp_ratio: float, dropout: float, layer_scale: float | None
    ) -> None:
        super().__init__()
        hidden = round(d_model * mlp_ratio)
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, hidden)
        self.linear2 = nn.Linear(hidden, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)  # inside the MLP
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.gain1 = gain(d_model, layer_scale)
        self.gain2 = gain(d_model, layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.norm1(x)
        x = x + self.gain1(self.dropout1(self.self_attn(q, q, q, need_weights=False)[0]))
        mlp = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x)))))
        return x + self.gain2(self.dropout2(mlp))


class TransformerEncoder(nn.Module):
    """(B, C, H, W) -> features: project channels to d_model, add 2-D positional embeddings, run `depth`
    pre-norm layers, then read out.

    readout="cls": a class token is prepended and its normalized output is the feature (B, d_model).
    readout="pooled": the feature is the average-pooled input map plus a projection of the mean of the
    normalized tokens, behind a LayerScale (B, C): with a small gain the stage starts as the plain
    pooled CNN features (what the model without a transformer sees) and only adds what it learns.

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
        layer_scale: float | None = None,
        readout: str = "cls",
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"transformer heads ({heads}) must divide d_model ({d_model})")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.readout = readout
        self.proj = nn.Linear(in_channels, d_model)
        self.pos_embed = nn.Parameter(torch.empty(1, d_model, grid, grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if readout == "cls":
            self.cls_token = nn.Parameter(torch.empty(1, 1, d_model))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        else:
            self.out = nn.Linear(d_model, in_channels)
            self.out_gain = gain(in_channels, layer_scale)
        # The names of nn.TransformerEncoder(layer, depth, norm) ("layers.layers.<i>", "layers.norm").
        self.layers = nn.ModuleDict(
            {
                "layers": nn.ModuleList(
                    EncoderLayer(d_model, heads, mlp_ratio, dropout, layer_scale) for _ in range(depth)
                ),
                "norm": nn.LayerNorm(d_model),
            }
        )
        self.out_features = d_model if readout == "cls" else in_channels

    def positional_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, H*W, d_model) embeddings for an H x W map."""
        pos = self.pos_embed
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = self.proj(x.flatten(2).transpose(1, 2)) + self.positional_embedding(h, w)
        if self.readout == "cls":
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for layer in self.layers["layers"]:
            tokens = layer(tokens)
        tokens = self.layers["norm"](tokens)
        if self.readout == "cls":
            return tokens[:, 0]
        return x.mean(dim=(2, 3)) + self.out_gain(self.out(tokens.mean(dim=1)))
