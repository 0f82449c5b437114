"""`emotionnet-eval` and `emotionnet-predict --no-detect` on CUDA agree with the CPU on a GPU-trained model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.gpu.gpu_utils import GPU, console_script, run_with, tiny_args
from tests.training_utils import train_command

pytestmark = GPU


@pytest.fixture(scope="module")
def model(tmp_path_factory, gpu_data) -> Path:
    out = tmp_path_factory.mktemp("gpu_model")
    result = run_with(
        train_command(*tiny_args(gpu_data, out, "m", "run.max_steps=40", "run.mixed_precision=bf16"))
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out / "m" / "best"


def _json(*cmd: str) -> dict:
    result = run_with(list(cmd))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def test_eval_on_cuda_matches_cpu(tmp_path, model, gpu_data):
    args = (console_script("emotionnet-eval"), str(model), str(gpu_data), "--split", "validation", "--json",
            "--no-progress", "--tta", "flip", "--confusion-png", str(tmp_path / "confusion.png"))  # fmt: skip
    cuda, cpu = _json(*args, "--device", "cuda"), _json(*args, "--device", "cpu")
    assert cuda["n"] == cpu["n"] == 60
    # Equal up to a tie or two that float rounding may break the other way.
    assert abs(cuda["accuracy"] - cpu["accuracy"]) <= 2 / 60, (cuda["accuracy"], cpu["accuracy"])


def test_predict_no_detect_on_cuda_matches_cpu(tmp_path, model):
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    paths = [str(tmp_path / f"face{i}.png") for i in range(len(faces))]
    for path, face in zip(paths, faces, strict=True):
        assert cv2.imwrite(path, face)
    args = (
        console_script("emotionnet-predict"),
        *paths,
        "--no-detect",
        "--json",
        "--no-progress",
        "--model",
        str(model),
    )
    cuda, cpu = _json(*args, "--device", "cuda"), _json(*args, "--device", "cpu")

    def probabilities(result: dict) -> np.ndarray:
        return np.array(
            [list(f["probabilities"].values()) for image in result["images"] for f in image["faces"]]
        )

    assert probabilities(cuda).shape == (3, 7)
    np.testing.assert_allclose(probabilities(cuda), probabilities(cpu), atol=1e-3)
