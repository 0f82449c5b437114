"""EmotionNet: EfficientNet-B0 features -> channel attention -> spatial self-attention ->
transformer encoder -> classifier head, for 48x48 grayscale FER2013 faces."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from emotionnet.model.attention import ChannelAttention, SpatialSelfAttention
from emotionnet.model.backbone import STAGE_CHANNELS, Backbone, check_backbone, feature_map_size
from emotionnet.model.encoder import READOUTS, TransformerEncoder
from emotionnet.model.head import ClassifierHead
from emotionnet.model.pretrained import (
    DESCRIPTION_NAME,
    WEIGHTS_NAME,
    ExportError,
    load_checked,
    read_description_values,
)


@dataclass
class ModelConfig:
    """Every knob of EmotionNet; defaults mirror configs/model/emotionnet.yaml."""

    input_size: int = 48  # side the data pipeline resizes faces to
    grayscale: str = "stem"  # "stem": 1-channel stem conv; "repeat": gray copied to RGB
    backbone_stages: int = 5  # EfficientNet-B0 MBConv stages kept (1..7)
    output_stride: int = 8  # backbone downsampling; 48 px / 8 = 6x6 map
    stride_reduction: str = "late"  # below B0's stride 16: "late" stages at 2x resolution, or "stem": all
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
    # Initial LayerScale gain of every added stage's residual branch (channel gate, spatial attention,
    # transformer layers and readout): each starts as (near) identity. null: no gains, full strength.
    layer_scale: float | None = 0.01
    readout: str = "pooled"  # "pooled": pooled CNN map + gained transformer output; "cls": class token
    # Training only: BatchNorm statistics over the batch of all processes (emotionnet/train/replicas.py);
    # "auto": when the run has several. Exports hold the same tensors either way.
    sync_batchnorm: bool | str = "auto"

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
        if not self.mlp_ratio > 0:
            raise ValueError(f"model.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.layer_scale is not None and self.layer_scale < 0:
            raise ValueError(f"model.layer_scale must be >= 0 or null, got {self.layer_scale}")
        if self.sync_batchnorm not in (True, False, "auto"):
            raise ValueError(f"model.sync_batchnorm must be auto, true or false, got {self.sync_batchnorm!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"model.readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        # What the modules would refuse at build time, refused at load instead (a config error, not a crash
        # after the data was prepared).
        check_backbone(self.backbone_stages, self.output_stride, self.grayscale, self.stride_reduction)
        channels = STAGE_CHANNELS[self.backbone_stages - 1]
        if self.spatial_attention and channels % self.spatial_heads:
            raise ValueError(
                f"model.spatial_heads ({self.spatial_heads}) must divide the backbone's {channels} channels"
            )
        if self.transformer and self.d_model % self.heads:
            raise ValueError(f"model.heads ({self.heads}) must divide model.d_model ({self.d_model})")


class EmotionNet(nn.Module):
    """Facial emotion classifier: (B, 1, input_size, input_size) normalized faces -> (B, num_classes) logits.

    Backbone: EfficientNet-B0 stages 1-5 (112 channels). At 48 px B0's own stride (16) leaves a 3x3
    map; output stride 8 gives the attention stages a 6x6 map to attend over. stride_reduction="late"
    gets it by dropping the stride of stage 4 (only stages 4-5 run at 2x resolution: 0.106 GFLOPs per
    image for the full model vs 0.034 at stride 16), "stem" by dropping the stem's (everything at 2x:
    0.137 GFLOPs). Stages 6-7 hold 2.7M of B0's 3.6M parameters and would more than double the cost;
    the transformer encoder takes over their job (global context over the map's positions).

    Every added stage is a residual branch whose LayerScale gains start at `layer_scale` (default 0.01):
    the channel gate scales by 1 + gamma * tanh(.), the spatial attention and transformer layers add
    gamma * branch, and the readout adds a gained projection of the transformer's mean token to the
    average-pooled CNN map. At initialisation the full model is therefore (nearly) the backbone + pooling
    + head that learns fastest from scratch, and each stage grows only as far as it helps. layer_scale
    null with readout "cls" is the previous architecture (sigmoid gate, full-strength branches, class
    token), kept for exported models that predate the gains.

    Every stage after the backbone can be switched off; without the transformer the map is
    average-pooled into the head. `emotionnet-summary` prints the per-stage parameters and FLOPs.
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
            stride_reduction=config.stride_reduction,
        )
        channels = self.backbone.out_channels
        self.channel_attention = (
            ChannelAttention(channels, config.channel_reduction, config.layer_scale)
            if config.channel_attention
            else nn.Identity()
        )
        self.spatial_attention = (
            SpatialSelfAttention(channels, config.spatial_heads, config.dropout, config.layer_scale)
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
                layer_scale=config.layer_scale,
                readout=config.readout,
            )
            features = self.encoder.out_features
        else:
            self.encoder = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            features = channels
        self.head = ClassifierHead(features, config.head_hidden, config.head_dropout, config.num_classes)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> EmotionNet:
        """An export (a run's `best/` or `final/`, the bundled model) in eval mode, float32:
        `EmotionNet.from_pretrained("models/emotionnet-fer2013")`. Inputs are preprocessed faces; the
        preprocessing and class names are in the export's emotionnet.json (`load_export` returns them).

        ExportError (naming the file) for a description or weights that cannot be read or do not fit."""
        values = read_description_values(directory)["model"]
        try:
            config = ModelConfig(**values)
        except (TypeError, ValueError) as err:  # an unknown key, a wrong type or value
            raise ExportError(f"{Path(directory) / DESCRIPTION_NAME}: {err}") from err
        return load_checked(lambda: cls(config), Path(directory) / WEIGHTS_NAME).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)
        x = self.channel_attention(x)
        x = self.spatial_attention(x)
        return self.head(self.encoder(x))


def create_model(config: ModelConfig | None = None) -> EmotionNet:
    """The model factory scripts and tests use (the seam where pretrained weights or variants plug in)."""
    return EmotionNet(config)
