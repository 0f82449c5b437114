"""An export's files as the model reads them: `emotionnet.json` (format version, legacy architecture
defaults) and `model.safetensors`, whose header is checked against the architecture before it is built.

A description is trusted only as far as the weights confirm it: a tampered `emotionnet.json` with large
but finite sizes (d_model 4096, depth 64) would otherwise allocate tens of GB before a weight is read.
The model is first built on the `meta` device (shapes, no memory), its parameter count bounded and its
shapes compared with the safetensors header (read without the tensors); only then is it built for real.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from emotionnet.errors import UserError

WEIGHTS_NAME = "model.safetensors"
DESCRIPTION_NAME = "emotionnet.json"
EXPORT_FORMAT_VERSION = 1
# The bundled model has 1.6M parameters; the largest configuration we train stays well under 10M.
MAX_PARAMETERS = 100_000_000

# What an export description written before a field existed means: the architecture it was trained
# with (stem stride reduction, no LayerScale gains, class-token readout). New exports name every field.
LEGACY_DEFAULTS = {"stride_reduction": "stem", "layer_scale": None, "readout": "cls"}


class ExportError(UserError):
    """A model export that is missing, unreadable or does not fit together; the message names the file."""


def read_description_values(directory: str | Path) -> dict[str, Any]:
    """The export's `emotionnet.json` as a dict of the current format (legacy model fields filled in);
    ExportError naming the file when it is missing, unreadable or of another format version."""
    path = Path(directory) / DESCRIPTION_NAME
    if not path.is_file():
        raise ExportError(f"{directory} is not an EmotionNet model export (no {DESCRIPTION_NAME})")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ExportError(f"{path}: {err}") from err
    version = values.get("format_version") if isinstance(values, dict) else None
    if version != EXPORT_FORMAT_VERSION:
        raise ExportError(
            f"{path}: export format version {version!r}, but this EmotionNet reads version "
            f"{EXPORT_FORMAT_VERSION} (re-export the model with a matching EmotionNet)"
        )
    if not isinstance(values.get("model"), dict):
        raise ExportError(f"{path}: no `model` section describing the architecture")
    values["model"] = {**LEGACY_DEFAULTS, **values["model"]}
    return values


def weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from the safetensors header (no tensor is read)."""
    try:
        with safe_open(weights, framework="pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}  # noqa: SIM118
    except FileNotFoundError as err:
        raise ExportError(f"{weights}: no such file (an incomplete export)") from err
    except (SafetensorError, OSError) as err:  # truncated, empty or not a safetensors file at all
        raise ExportError(f"{weights}: not a readable safetensors file ({err})") from err


def check_architecture(model: nn.Module, shapes: dict[str, tuple[int, ...]], weights: Path) -> None:
    """ExportError unless `model` (on any device, `meta` included) has exactly the tensors, and shapes, of
    the weights file, and stays under MAX_PARAMETERS (weights as large as a tampered description)."""
    description = weights.with_name(DESCRIPTION_NAME)
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    for key in sorted(expected.keys() | shapes.keys()):
        if expected.get(key) != shapes.get(key):
            described = expected.get(key, "absent")
            stored = shapes.get(key, "absent")
            raise ExportError(
                f"{weights} does not fit the model in {description}: {key} is {described} there, "
                f"{stored} in the weights"
            )
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise ExportError(
            f"{description}: its `model` section describes {count:,} parameters, over the limit of "
            f"{MAX_PARAMETERS:,} (a damaged or foreign description)"
        )


def load_checked(build: Callable[[], nn.Module], weights: Path) -> nn.Module:
    """The model `build` makes, with the weights of `weights` (float32, eval mode), checked first on the
    `meta` device so that a description the weights do not confirm allocates nothing."""
    shapes = weight_shapes(weights)
    with torch.device("meta"):
        check_architecture(build(), shapes, weights)
    model = build()
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as err:  # a header that reads but data that does not
        raise ExportError(f"{weights}: not a readable safetensors file ({err})") from err
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()
