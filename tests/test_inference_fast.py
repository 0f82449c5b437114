"""Fast CPU inference: the optimised path gives the probabilities of a plain eager fp32 forward."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as F

from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import TENCROP_FRACTION, TTA_MODES
from emotionnet.inference.ensemble import Ensemble, tta_probabilities
from emotionnet.inference.export import load_export, save_export
from emotionnet.inference.optimize import InferenceModel
from emotionnet.model.emotionnet import EmotionNet, ModelConfig
from tests.training_utils import REPO_ROOT, train_env

# Folding BatchNorm and channels_last only reorder float32 arithmetic: differences are ~1e-7.
PROB_ATOL = 1e-5
CONFIG = ModelConfig(
    backbone_stages=3, output_stride=8, d_model=32, depth=1, heads=2, spatial_heads=2, head_hidden=32,
    backbone_drop_path=0.0, layer_scale=0.5,  # every added stage contributes visibly to the logits
)  # fmt: skip


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A small randomly initialised EmotionNet export whose BatchNorms hold the statistics of its inputs
    (as a trained model's do: with the initial ones the backbone's output is ~1e-5 and every face
    gets the same probabilities) and random affine parameters."""
    torch.manual_seed(0)
    model = EmotionNet(CONFIG)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the calibration batches
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.3, 0.3)
        model.train()
        for _ in range(3):
            model(Preprocessing()(faces(32)))
    return save_export(
        tmp_path_factory.mktemp("export") / "model", model.state_dict(), CONFIG, Preprocessing()
    )


def faces(count: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (count, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )


def reference_views(pixels: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The TTA views spelled out with torchvision's own ten-crop."""
    if tta == "none":
        return [pixels]
    if tta == "flip":
        return [pixels, F.horizontal_flip(pixels)]
    crops = F.ten_crop(pixels, [round(TENCROP_FRACTION * 48)] * 2)
    return [F.resize(crop, [48, 48], antialias=True) for crop in crops]


@pytest.mark.parametrize("tta", TTA_MODES)
def test_the_fast_path_gives_the_probabilities_of_a_plain_eager_forward(export, tta):
    model, description = load_export(export)
    batch = faces(37)  # not a multiple of the forward pass: the last pass is partial
    pixels = description.preprocessing(batch)
    with torch.no_grad():
        expected = torch.stack([model(view).softmax(-1) for view in reference_views(pixels, tta)]).mean(0)
    assert (expected - expected.mean(0)).abs().max() > 100 * PROB_ATOL  # faces told apart: a real check
    ensemble = Ensemble.load([str(export)], torch.device("cpu"))
    assert isinstance(ensemble.members[0].model, InferenceModel)
    torch.testing.assert_close(
        ensemble.predict_proba(batch, tta, batch_size=16), expected, atol=PROB_ATOL, rtol=0
    )


def test_the_inference_model_keeps_no_batchnorm_and_runs_channels_last(export):
    model = InferenceModel(load_export(export)[0])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_streaming_tta_views_does_not_depend_on_the_pass_size(export):
    model, description = load_export(export)
    pixels = description.preprocessing(faces(9))
    with torch.no_grad():
        per_view = tta_probabilities(model, pixels, "tencrop", description.preprocessing)
        streamed = tta_probabilities(model, pixels, "tencrop", description.preprocessing, batch_size=7)
    torch.testing.assert_close(streamed, per_view, atol=PROB_ATOL, rtol=0)


def test_the_inference_benchmark_runs_on_synthetic_faces_and_ends_with_its_json(export):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_inference", "--synthetic", "--faces", "8", "--rounds", "1",
         "--model", str(export), "--doc", ""],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=train_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for tta in TTA_MODES:
        assert summary[f"{tta}_faces_s"] > 0 and summary[f"baseline_{tta}_faces_s"] > 0
        assert summary[f"{tta}_max_prob_diff"] < PROB_ATOL
    assert "| tencrop |" in result.stdout
