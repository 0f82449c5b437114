"""ONNX export of a model export (`model.onnx` beside its weights), and the model run by ONNX Runtime.

The graph takes preprocessed faces, float32 (batch, 1, S, S) with a dynamic batch, and returns logits
(batch, K). The file's metadata_props carry what a deployment needs without PyTorch or emotionnet.json:
`preprocessing` (JSON: input_size, mean, std, and the steps), `class_names` (JSON list), `model_config`
(JSON) and `weights_sha256` (of the model.safetensors it came from, so a stale file is refused).

Exported with torch.onnx's TorchScript exporter (`dynamo=False`): the torch.export-based one needs
onnxscript, one more dependency, and tracing is exact here (the only shape test in the model, the
positional embedding's size, is fixed by the input size). Every export is checked against the PyTorch
model with ONNX Runtime before it is written.

onnx and onnxruntime are an extra: `pip install 'emotionnet[onnx]'`.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from data_prep.files import write_atomic
from data_prep.schema import IMAGE_SIZE
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.errors import UserError
from emotionnet.inference.export import WEIGHTS_NAME, load_export

ONNX_NAME = "model.onnx"
OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
PARITY_TOLERANCE = 1e-4  # largest |logit difference| from PyTorch an export may have
PARITY_FACES = 64  # synthetic faces each export is checked on
PREPROCESSING_STEPS = (
    "uint8 grayscale face -> resize to input_size (antialiased) -> / 255 -> (x - mean) / std"
)


class OnnxError(UserError):
    """An ONNX export or file that cannot be made or used; the message names the file or the missing extra."""


def require(module: str) -> ModuleType:
    """`onnx` or `onnxruntime`, or OnnxError saying how to install the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise OnnxError(f"{module} is not installed: pip install 'emotionnet[onnx]'") from err


def weights_sha256(directory: Path) -> str:
    return hashlib.sha256((directory / WEIGHTS_NAME).read_bytes()).hexdigest()


def synthetic_faces(count: int, seed: int = 0) -> torch.Tensor:
    """(N, 48, 48) random uint8 faces."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)


def export_onnx(directory: str | Path, out: str | Path | None = None) -> tuple[Path, float]:
    """Write the export's model as ONNX (default DIRECTORY/model.onnx, atomically) after checking it with
    ONNX Runtime; returns the path and the largest |logit difference| from PyTorch on PARITY_FACES
    synthetic faces. OnnxError when the extra is missing, the file cannot be written or they disagree."""
    directory = Path(directory)
    out = Path(out) if out else directory / ONNX_NAME
    model, description = load_export(directory)  # a model error first, then a missing extra
    onnx = require("onnx")
    size = description.preprocessing.input_size
    metadata = {
        "preprocessing": json.dumps({**asdict(description.preprocessing), "steps": PREPROCESSING_STEPS}),
        "class_names": json.dumps(description.class_names),
        "model_config": json.dumps(asdict(description.model)),
        "weights_sha256": weights_sha256(directory),
    }
    traced = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes (see above)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, size, size),),
            traced,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_from_string(traced.getvalue())
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = "EmotionNet facial expression classifier: preprocessed 48x48 faces -> class logits"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    pixels = description.preprocessing(synthetic_faces(PARITY_FACES))
    difference = max_logit_difference(model, OnnxModel.create(data), pixels)
    if not difference <= PARITY_TOLERANCE:
        raise OnnxError(
            f"the ONNX graph of {directory} differs from PyTorch by {difference:.2e} in the logits (over "
            f"{PARITY_TOLERANCE:.0e}); nothing was written"
        )
    try:
        write_atomic(out, data)
    except OSError as err:
        raise OnnxError(f"cannot write {out}: {err.strerror or err}") from err
    return out, difference


@torch.inference_mode()
def max_logit_difference(model: nn.Module, onnx_model: OnnxModel, pixels: torch.Tensor) -> float:
    """The largest |logit difference| between the PyTorch and ONNX Runtime models on preprocessed faces."""
    return float((model(pixels) - onnx_model(pixels)).abs().max())


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, called like the PyTorch model: pixels -> logits.

    ONNX Runtime uses as many threads as torch (torch.get_num_threads()), so one setting governs both.
    """

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session

    @classmethod
    def create(cls, model: bytes | str) -> OnnxModel:
        """A session over an ONNX file's path or its bytes."""
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        return cls(ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]))

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


def load_onnx(directory: Path) -> tuple[OnnxModel, Preprocessing, tuple[str, ...]]:
    """DIRECTORY/model.onnx run by ONNX Runtime, with the preprocessing and class names of its metadata.

    OnnxError naming the file when it is missing, unreadable, or made from other weights than the
    export's model.safetensors beside it."""
    path = directory / ONNX_NAME
    if not path.is_file():
        raise OnnxError(f"{directory} has no {ONNX_NAME}: run emotionnet-export {directory} --format onnx")
    ort = require("onnxruntime")
    errors = ort.capi.onnxruntime_pybind11_state
    try:
        model = OnnxModel.create(str(path))
    except (errors.Fail, errors.InvalidProtobuf, errors.InvalidGraph, errors.NoSuchFile) as err:
        raise OnnxError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0][:200]})") from err
    metadata = model.metadata
    try:
        values = json.loads(metadata["preprocessing"])
        preprocessing = Preprocessing(**{k: v for k, v in values.items() if k != "steps"})
        names = tuple(json.loads(metadata["class_names"]))
        stamp = metadata["weights_sha256"]
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise OnnxError(f"{path}: not an EmotionNet ONNX export (its metadata lacks {err})") from err
    if (directory / WEIGHTS_NAME).is_file() and stamp != weights_sha256(directory):
        raise OnnxError(
            f"{path} was exported from other weights than {directory / WEIGHTS_NAME}: run "
            f"emotionnet-export {directory} --format onnx again"
        )
    return model, preprocessing, names
