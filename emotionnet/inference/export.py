"""Self-contained model exports (`best/`, `final/`): safetensors weights + a JSON description.

An export holds everything inference needs (model config, preprocessing, class names), so it runs
without the training code's config files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_prep.schema import CLASS_NAMES
from emotionnet.config.loader import ConfigError, build
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.errors import UserError
from emotionnet.model.emotionnet import LEGACY_DEFAULTS, EmotionNet, ModelConfig

WEIGHTS_NAME = "model.safetensors"
DESCRIPTION_NAME = "emotionnet.json"
EXPORT_FORMAT_VERSION = 1


class ExportError(UserError):
    """A model export that is missing, unreadable or does not fit together; the message names the file."""


@dataclass
class ExportDescription:
    model: ModelConfig
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    format_version: int = EXPORT_FORMAT_VERSION
    metadata: dict = field(default_factory=dict)  # e.g. step, epoch, validation metrics

    def __post_init__(self) -> None:
        # A description read from a file: what does not fit together fails here, not mid-prediction.
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for a model of {self.model.num_classes} classes"
            )
        if self.preprocessing.input_size != self.model.input_size:
            raise ValueError(
                f"preprocessing.input_size {self.preprocessing.input_size} differs from model.input_size "
                f"{self.model.input_size}"
            )
        if not self.preprocessing.std > 0:
            raise ValueError(f"preprocessing.std must be > 0, got {self.preprocessing.std}")


def save_export(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    preprocessing: Preprocessing,
    metadata: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an export atomically: a sibling temp dir renamed over `directory` when complete."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    tensors = {
        k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state_dict.items()
    }
    save_file(tensors, tmp / WEIGHTS_NAME)
    # The weights are in the export: rebuilding it must not look for pretrained backbone files.
    description = ExportDescription(
        replace(model_config, pretrained=None), preprocessing, metadata=metadata or {}
    )
    (tmp / DESCRIPTION_NAME).write_text(json.dumps(asdict(description), indent=2) + "\n")
    return replace_directory(tmp, directory)


def replace_directory(staged: Path, directory: Path) -> Path:
    """Move a completed `staged` dir to `directory`, replacing any previous one (readers never see a mix)."""
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(staged, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, directory)
    return directory


def read_description(directory: str | Path) -> ExportDescription:
    """The export's description; ExportError naming the file when it is missing or does not fit."""
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
    if isinstance(values.get("model"), dict):  # fields it predates mean the architecture it had
        values["model"] = {**LEGACY_DEFAULTS, **values["model"]}
    try:
        return build(ExportDescription, values)
    except ConfigError as err:
        raise ExportError(f"{path}: {err}") from err


def load_export(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[EmotionNet, ExportDescription]:
    """The exported model in eval mode (float32) and its description.

    ExportError (naming the file) for a description or weights that cannot be read or do not fit."""
    description = read_description(directory)
    weights = Path(directory) / WEIGHTS_NAME
    model = EmotionNet(description.model)  # the description was checked: it builds
    try:
        state = load_file(weights)
    except FileNotFoundError as err:
        raise ExportError(f"{weights}: no such file (an incomplete export)") from err
    except (SafetensorError, OSError) as err:  # truncated, empty or not a safetensors file at all
        raise ExportError(f"{weights}: not a readable safetensors file ({err})") from err
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as err:  # the first line only says "Error(s) in loading state_dict": show the next
        details = str(err).splitlines()[1:] or [str(err)]
        raise ExportError(
            f"{weights} does not fit the model in {DESCRIPTION_NAME} ({details[0].strip()[:200]})"
        ) from err
    return model.to(device).eval(), description
