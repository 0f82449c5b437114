"""Self-contained model exports (`best/`, `final/`): safetensors weights + a JSON description.

An export holds everything inference needs (model config, preprocessing, class names), so it runs
without the training code's config files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from data_prep.files import no_room_message, out_of_room, replace_directory, staged_directory
from data_prep.schema import CLASS_NAMES
from emotionnet.config.loader import ConfigError, build
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.model.emotionnet import EmotionNet, ModelConfig
from emotionnet.model.pretrained import (  # the file names and error are the model layer's (from_pretrained)
    DESCRIPTION_NAME,
    EXPORT_FORMAT_VERSION,
    WEIGHTS_NAME,
    ExportError,
    load_checked,
    read_description_values,
)


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
    tensors = {
        k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state_dict.items()
    }
    # The weights are in the export: rebuilding it must not look for pretrained backbone files.
    description = ExportDescription(
        replace(model_config, pretrained=None), preprocessing, metadata=metadata or {}
    )
    tmp = staged_directory(directory)
    try:
        save_file(tensors, tmp / WEIGHTS_NAME)
        (tmp / DESCRIPTION_NAME).write_text(json.dumps(asdict(description), indent=2) + "\n")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if out_of_room(err):
            needed = sum(t.numel() * t.element_size() for t in tensors.values())
            raise ExportError(no_room_message(directory, needed)) from err
        raise
    return replace_directory(tmp, directory)


def read_description(directory: str | Path) -> ExportDescription:
    """The export's description; ExportError naming the file when it is missing or does not fit."""
    values = read_description_values(directory)
    try:
        return build(ExportDescription, values)
    except ConfigError as err:
        raise ExportError(f"{Path(directory) / DESCRIPTION_NAME}: {err}") from err


def load_export(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[EmotionNet, ExportDescription]:
    """The exported model in eval mode (float32) and its description.

    ExportError (naming the file) for a description or weights that cannot be read or do not fit; a
    description the weights header does not confirm is refused before the model is built."""
    description = read_description(directory)
    model = load_checked(lambda: EmotionNet(description.model), Path(directory) / WEIGHTS_NAME)
    return model.to(device), description
