"""EmotionNet: EfficientNet-B0 features -> channel attention -> spatial self-attention ->
transformer encoder -> classifier head, for 48x48 grayscale FER2013 faces."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields

import torch
from torch import nn

from emotionnet.model.attention import ChannelAttention, SpatialSelfAttention
from emotionnet.model.backbone import Backbone, feature_map_size
from emotionnet.model.encoder import TransformerEncoder
from emotionnet.model.head import ClassifierHead


@dataclass
class ModelConfig:
    """Every knob of EmotionNet; defaults mirror configs/model/emotionnet.yaml."""

    input_size: int = 48  # side the data pipeline resizes faces to
    grayscale: str = "stem"  # "stem": 1-channel stem conv; "repeat": gray copied to RGB
    backbone_stages: int = 5  # EfficientNet-B0 MBConv stages kept (1..7)
    output_stride: int = 8  # backbone downsampling; 48 px / 8 = 6x6 map
    pretrained: str | None = None  # None, "imagenet" (torch hub cache) or a state-dict path
    backbone_drop_path: float = 0.2  # torchvision's stochastic depth over the MBConv blocks
    channel_attention: bool = True
    channel_reduction: int = 8
    spatial_attention: bool = True
    spatial_heads: int = 4
    transformer: bool = True
    d_model: int = 192
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1  # attention / MLP dropout in the attention and transformer stages
    head_hidden: int = 256
    head_dropout: float = 0.3
    num_classes: int = 7

    def __post_init__(self) -> None:
        # YAML and CLI overrides arrive untyped: reject wrong types here in one sentence.
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            if float in allowed and type(value) is int:
                setattr(self, f.name, float(value))
            elif type(value) not in allowed:
                names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise ValueError(f"model.{f.name} must be {names}, got {value!r}")
        positive = (
            "input_size",
            "channel_reduction",
            "spatial_heads",
            "d_model",
            "depth",
            "heads",
            "head_hidden",
        )
        for name in (*positive, "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("backbone_drop_path", "dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")


class EmotionNet(nn.Module):
    """Facial emotion classifier: (B, 1, input_size, input_size) normalized faces -> (B, num_classes) logits.

    Why the default is 48 px, output stride 8, backbone stages 1-5 (0.14 GFLOPs/image, 1.6M params):
    EfficientNet-B0 downsamples by 32, so a native 48x48 face ends as a 2x2 map - nothing left for
    spatial attention to choose between. Setting the stem's stride to 1 keeps the 48 px input and
    gives a 6x6 map after stage 5 (stride 8) at exactly the cost of upsampling the face to 96 px,
    without inventing pixels or quadrupling the data pipeline's work. Stages 6-7 hold 2.7M of the
    backbone's 3.6M parameters and, run at 6x6, would more than double the cost (0.33 GFLOPs/image,
    4.7M params; about 55% of the default's CPU training throughput); the transformer encoder takes
    over their job (global context over the 36 positions). Measured with 2 CPU threads, batch 64,
    channels_last: ~170 training images/s, about 3 minutes per FER2013 training epoch.
    `emotionnet-summary` prints the per-stage parameters and FLOPs of any configuration.

    Every stage after the backbone can be switched off; without the transformer the map is
    average-pooled into the head.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        self.backbone = Backbone(
            stages=config.backbone_stages,
            output_stride=config.output_stride,
            grayscale=config.grayscale,
            pretrained=config.pretrained,
            drop_path=config.backbone_drop_path,
        )
        channels = self.backbone.out_channels
        self.channel_attention = (
            ChannelAttention(channels, config.channel_reduction)
            if config.channel_attention
            else nn.Identity()
        )
        self.spatial_attention = (
            SpatialSelfAttention(channels, config.spatial_heads, config.dropout)
            if config.spatial_attention
            else nn.Identity()
        )
        if config.transformer:
            self.encoder = TransformerEncoder(
                channels,
                feature_map_size(config.input_size, config.output_stride),
                d_model=config.d_model,
                depth=config.depth,
                heads=config.heads,
                mlp_ratio=config.mlp_ratio,
                dropout=config.dropout,
            )
            features = config.d_model
        else:
            self.encoder = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            features = channels
        self.head = ClassifierHead(features, config.head_hidden, config.head_dropout, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)
        x = self.channel_attention(x)
        x = self.spatial_attention(x)
        return self.head(self.encoder(x))


def create_model(config: ModelConfig | None = None) -> EmotionNet:
    """The model factory scripts and tests use (the seam where pretrained weights or variants plug in)."""
    return EmotionNet(config)
