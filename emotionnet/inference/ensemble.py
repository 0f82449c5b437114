"""Models for inference: load exports or MLflow models (one or an ensemble) and classify uint8 faces.

Shared by `emotionnet-eval` and `emotionnet-predict`. An ensemble averages its members' class
probabilities; each member applies its own preprocessing and test-time augmentation.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from emotionnet.assets import BUNDLED_MODEL
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import TTAMode, tta_views
from emotionnet.errors import UserError
from emotionnet.inference.export import DESCRIPTION_NAME, WEIGHTS_NAME, ExportError, load_export
from emotionnet.inference.onnx_export import load_onnx
from emotionnet.inference.optimize import InferenceModel
from emotionnet.run_layout import EXPORTS

# Used when no model is given. The bundled model lives in the source tree (next to the package);
# EMOTIONNET_MODEL points elsewhere (e.g. an installed copy or your own export).
DEFAULT_MODEL_ENV = "EMOTIONNET_MODEL"
MLFLOW_URI_SCHEMES = ("runs:/", "models:/")
# Images (TTA views included) per forward pass. On a 2-core CPU 128 ran fastest: 64 pays more per-call
# overhead, and from 512 on the activations no longer stay in cache (1,150 faces/s at 1,024 per pass, 1,970
# at 128; docs/benchmarks.md, "Inference levers (CPU)").
FORWARD_BATCH = 128
RUNTIMES = ("torch", "onnx")  # onnx: the export's model.onnx run by ONNX Runtime (emotionnet-export)


class ModelLoadError(UserError):
    """A model argument that cannot be loaded; the message says which and why, in one sentence."""


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on its device
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    source: str  # what the user passed

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)  # an ONNX Runtime model has none: it runs on the CPU
        return parameter.device if parameter is not None else torch.device("cpu")


def default_model_dir() -> Path:
    """The model used when none is given: $EMOTIONNET_MODEL, else the bundled one."""
    return Path(os.environ.get(DEFAULT_MODEL_ENV) or BUNDLED_MODEL)


def resolve_model_specs(specs: Sequence[str]) -> list[str]:
    """The given models, or the default one (checked to exist) when none is given."""
    if specs:
        return list(specs)
    path = default_model_dir()
    if not (path / DESCRIPTION_NAME).is_file():
        raise ModelLoadError(
            f"no model given and the default model {path} is not there "
            f"(pass a model export directory or MLflow model URI, or set {DEFAULT_MODEL_ENV})"
        )
    return [str(path)]


def pick_device(requested: str | None = None) -> torch.device:
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model(spec: str, device: torch.device, optimize: bool = True, runtime: str = "torch") -> LoadedModel:
    """An export directory (`best/`, `final/`, the bundled model) or an MLflow model URI.

    optimize: made ready for inference only (optimize.InferenceModel); False keeps the model as exported.
    runtime "onnx": the export's model.onnx run by ONNX Runtime on the CPU (device and optimize unused).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if spec.startswith(MLFLOW_URI_SCHEMES):
        return _load_mlflow_model(spec, device, optimize, runtime)
    path = Path(spec)
    if not path.exists():
        raise ModelLoadError(f"{spec}: no such model directory (nor a runs:/ or models:/ MLflow URI)")
    if not (path / DESCRIPTION_NAME).is_file():
        exports = [name for name in EXPORTS if (path / name / DESCRIPTION_NAME).is_file()]
        hint = f"; pass {path / exports[0]} instead" if exports else ""
        raise ModelLoadError(f"{spec} is not an EmotionNet model export (no {DESCRIPTION_NAME}){hint}")
    return _load_export_dir(path, device, spec, optimize, runtime)


def _load_export_dir(
    path: Path, device: torch.device, source: str, optimize: bool, runtime: str
) -> LoadedModel:
    if runtime == "onnx":
        return LoadedModel(*load_onnx(path), source)
    try:
        model, description = load_export(path, device)
    except ExportError as err:  # a bad description, or weights that do not fit it
        raise ModelLoadError(f"{source}: cannot load the model export: {_first_line(err)}") from err
    return LoadedModel(
        InferenceModel(model) if optimize else model,
        description.preprocessing,
        tuple(description.class_names),
        source,
    )


def _load_mlflow_model(uri: str, device: torch.device, optimize: bool, runtime: str) -> LoadedModel:
    """An MLflow model logged by EmotionNet (see emotionnet/tracking/pyfunc_model.py): its export
    artifact is downloaded and read with the export loader. Nothing the registry holds is unpickled or
    run, so a model logged in another format (e.g. a pickled torch module) is refused."""
    import mlflow.artifacts  # slow import: only when an MLflow model is asked for
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="emotionnet-mlflow-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except (MlflowException, OSError) as err:
            raise ModelLoadError(f"{uri}: cannot load the MLflow model: {_first_line(err)}") from err
        exports = [
            p.parent for p in sorted(local.rglob(DESCRIPTION_NAME)) if (p.parent / WEIGHTS_NAME).is_file()
        ]
        if len(exports) != 1:
            raise ModelLoadError(
                f"{uri} is not an EmotionNet MLflow model (it holds no export with {WEIGHTS_NAME} and "
                f"{DESCRIPTION_NAME}; models logged as pickles by older EmotionNet versions are not loaded)"
            )
        return _load_export_dir(exports[0], device, uri, optimize, runtime)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def tta_probabilities(
    model: nn.Module,
    pixels: torch.Tensor,
    tta: TTAMode,
    preprocessing: Preprocessing,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Class probabilities (B, K) of preprocessed faces (B, 1, S, S), averaged over the TTA views.

    The V views of all B faces run as one stream of V * B images, `batch_size` per forward pass
    (default B: one view per pass), so a small batch with many views still fills each pass.
    """
    views = tta_views(pixels, tta, preprocessing)
    images = views.flatten(0, 1)
    probs = [model(chunk).float().softmax(-1) for chunk in images.split(batch_size or len(pixels))]
    return torch.cat(probs).unflatten(0, views.shape[:2]).mean(0)


class Ensemble:
    """One or more models whose probabilities are averaged (a single model is an ensemble of one)."""

    def __init__(self, members: Sequence[LoadedModel]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        names = {m.class_names for m in members}
        if len(names) > 1:
            listed = "; ".join(f"{m.source}: {', '.join(m.class_names)}" for m in members)
            raise ModelLoadError(f"the models predict different classes and cannot be averaged ({listed})")
        self.members = list(members)
        self.class_names = members[0].class_names

    @classmethod
    def load(
        cls, specs: Sequence[str], device: torch.device, optimize: bool = True, runtime: str = "torch"
    ) -> Ensemble:
        """The given models (or the default one); optimize and runtime: see load_model."""
        return cls([load_model(spec, device, optimize, runtime) for spec in resolve_model_specs(specs)])

    @property
    def sources(self) -> list[str]:
        return [m.source for m in self.members]

    @torch.inference_mode()
    def predict_proba(
        self, faces: torch.Tensor, tta: TTAMode = "none", batch_size: int = FORWARD_BATCH
    ) -> torch.Tensor:
        """uint8 faces (B, H, W) or (B, 1, H, W) -> averaged class probabilities (B, K) on the CPU.

        batch_size: images per forward pass, TTA views included (the views of all B faces are cut
        into passes of this many, whatever B is).
        """
        total = None
        for member in self.members:
            pixels = member.preprocessing(faces).to(member.device)
            probs = tta_probabilities(member.model, pixels, tta, member.preprocessing, batch_size).cpu()
            total = probs if total is None else total + probs
        return total / len(self.members)
