"""EfficientNet-B0 feature extractor (torchvision's) adapted to small grayscale faces."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn
from torchvision.models import EfficientNet_B0_Weights, efficientnet_b0

from emotionnet.errors import UserError

# torchvision's B0 `features`: index 0 is the stem, 1..7 the MBConv stages, 8 the 1280-wide 1x1 conv.
NUM_STAGES = 7
# Stage indices whose first block downsamples by 2 (the stem, index 0, also has stride 2).
_STRIDE2_STAGES = (2, 3, 4, 6)
# Output channels after each stage 1..7.
STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
_STEM_WEIGHT = "features.0.0.weight"


class PretrainedWeightsError(UserError):
    """Pretrained backbone weights are missing, unsafe or do not fit the backbone."""


def imagenet_cache_path() -> Path:
    """Where torch.hub keeps (and looks for) the IMAGENET1K_V1 EfficientNet-B0 checkpoint."""
    url = EfficientNet_B0_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_pretrained_state_dict(spec: str) -> dict[str, torch.Tensor]:
    """Read a torchvision EfficientNet-B0 state dict: `"imagenet"` (torch hub cache) or a file path.

    Files are read with `weights_only=True`, so a file holding arbitrary pickled objects is refused
    instead of executed.
    """
    if spec == "imagenet":
        path = imagenet_cache_path()
        if not path.is_file():
            url = EfficientNet_B0_Weights.IMAGENET1K_V1.url
            try:
                return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
            except OSError as exc:  # URLError is an OSError: offline machine, proxy, DNS...
                raise PretrainedWeightsError(
                    f"ImageNet weights for EfficientNet-B0 are not in the torch cache and could not be "
                    f"downloaded ({exc}); download {url} and put it at {path}"
                ) from exc
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PretrainedWeightsError(
            f"{path} holds more than tensors, refusing to unpickle it (save a plain state dict instead)"
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise PretrainedWeightsError(f"{path} is not a readable torch checkpoint ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state


def _natural_stride(stages: int) -> int:
    return 2 ** (1 + sum(1 for s in _STRIDE2_STAGES if s <= stages))


def supported_output_strides(stages: int) -> tuple[int, ...]:
    """Output strides reachable by dropping the stem stride and then the last stride-2 stage's."""
    natural = _natural_stride(stages)
    return tuple(s for s in (natural // 4, natural // 2, natural) if s >= 2)


def check_backbone(stages: int, output_stride: int, grayscale: str, stride_reduction: str) -> None:
    """ValueError naming the first of these that cannot build a backbone (ModelConfig checks them at load)."""
    if grayscale not in ("stem", "repeat"):
        raise ValueError(f"grayscale must be 'stem' or 'repeat', got {grayscale!r}")
    if stride_reduction not in ("stem", "late"):
        raise ValueError(f"stride_reduction must be 'stem' or 'late', got {stride_reduction!r}")
    if not 1 <= stages <= NUM_STAGES:
        raise ValueError(f"backbone stages must be in 1..{NUM_STAGES}, got {stages}")
    if output_stride not in supported_output_strides(stages):
        raise ValueError(
            f"output_stride {output_stride} is not reachable with {stages} backbone stages; "
            f"choose one of {supported_output_strides(stages)}"
        )


def feature_map_size(input_size: int, output_stride: int) -> int:
    """Side of the backbone's output map: every stride-2 conv (padding k//2) maps n to ceil(n / 2)."""
    size = input_size
    for _ in range(output_stride.bit_length() - 1):
        size = (size + 1) // 2
    return size


class Backbone(nn.Module):
    """torchvision EfficientNet-B0 `features[0:stages+1]` for (B, 1, S, S) input -> (B, C, S/os, S/os).

    grayscale="stem" replaces the 3-channel stem conv by a 1-channel one (pretrained RGB stem weights
    are summed over the input channels, which is exact for a gray image replicated to RGB);
    grayscale="repeat" keeps the RGB stem and repeats the channel. The output stride is reduced from
    B0's natural value by setting a stride-2 conv's stride to 1: stride_reduction="stem" takes the
    stem's first, then the last kept stride-2 stage's (every stage runs at twice the resolution: 4x
    the FLOPs); "late" takes the last stage's first, then the stem's (only the stages from the last
    stride-2 one on run at twice the resolution).
    The 1280-wide final 1x1 conv of B0 is dropped: it only serves ImageNet's classifier.
    """

    def __init__(
        self,
        stages: int = NUM_STAGES,
        output_stride: int = 32,
        grayscale: str = "stem",
        pretrained: str | None = None,
        drop_path: float = 0.2,
        stride_reduction: str = "stem",
    ) -> None:
        super().__init__()
        check_backbone(stages, output_stride, grayscale, stride_reduction)
        self.repeat_gray = grayscale == "repeat"
        self.out_channels = STAGE_CHANNELS[stages - 1]
        features = efficientnet_b0(stochastic_depth_prob=drop_path).features[: stages + 1]
        # Strides to drop, in order: the stem, then the last stride-2 stage among the kept ones ("late":
        # the other way round).
        stride_convs = [features[0][0]] + [
            features[s][0].block[1][0] for s in _STRIDE2_STAGES if s <= stages
        ][-1:]
        if stride_reduction == "late":
            stride_convs.reverse()
        reductions = (_natural_stride(stages) // output_stride).bit_length() - 1
        for conv in stride_convs[:reductions]:
            conv.stride = (1, 1)
        if pretrained is not None:
            self._load_features(features, load_pretrained_state_dict(pretrained), pretrained)
        if not self.repeat_gray:
            rgb = features[0][0]
            gray = nn.Conv2d(1, rgb.out_channels, rgb.kernel_size, rgb.stride, rgb.padding, bias=False)
            with torch.no_grad():
                gray.weight.copy_(rgb.weight.sum(dim=1, keepdim=True))
            features[0][0] = gray
        self.features = features

    @staticmethod
    def _load_features(features: nn.Sequential, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy the checkpoint's `features.<i>.*` entries for the kept children into `features`."""
        stem = state.get(_STEM_WEIGHT)
        if stem is None or stem.ndim != 4 or stem.shape[1] != 3:
            raise PretrainedWeightsError(
                f"{source} is not a torchvision EfficientNet-B0 state dict (no 3-channel {_STEM_WEIGHT})"
            )
        kept = {str(i) for i in range(len(features))}
        own = {}
        for key, value in state.items():
            prefix, child, rest = (key.split(".", 2) + ["", ""])[:3]
            if prefix == "features" and child in kept:
                own[f"{child}.{rest}"] = value
        try:
            features.load_state_dict(own)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise PretrainedWeightsError(f"{source} does not fit EfficientNet-B0: {first}") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_gray:
            x = x.expand(-1, 3, -1, -1)
        return self.features(x)
