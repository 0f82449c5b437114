"""Single-GPU training steps: bf16 and fp16 autocast, torch.compile with and without CUDA graphs (tiny model)."""

from __future__ import annotations

import pytest

from tests.gpu.gpu_utils import GPU, assert_finite_losses, run_with, tiny_args, train_losses
from tests.training_utils import train_command

pytestmark = GPU


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_on_cuda(tmp_path, gpu_data, precision):
    result = run_with(train_command(*tiny_args(gpu_data, tmp_path, precision, "run.max_steps=30",
                                               f"run.mixed_precision={precision}")))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert_finite_losses(tmp_path / precision, count=3)
    assert f"mixed_precision: {precision}" in (tmp_path / precision / "config.yaml").read_text()
    assert (tmp_path / precision / "best" / "model.safetensors").is_file()


def _close(a: list[float], b: list[float], rtol: float) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= rtol * abs(x) for x, y in zip(a, b, strict=True))


# Compiled and eager runs draw the same random numbers only without dropout inside the compiled graph and
# with inductor's `fallback_random` (its own RNG otherwise): then only kernel rounding differs.
NO_DROPOUT = ("run.max_steps=20", "model.dropout=0", "model.head_dropout=0", "model.backbone_drop_path=0")
SAME_RANDOM = {"TORCHINDUCTOR_FALLBACK_RANDOM": "1"}


@pytest.fixture(scope="module")
def eager_losses(tmp_path_factory, gpu_data) -> list[float]:
    out = tmp_path_factory.mktemp("eager")
    result = run_with(train_command(*tiny_args(gpu_data, out, "eager", *NO_DROPOUT)), **SAME_RANDOM)
    assert result.returncode == 0, result.stderr[-4000:]
    return train_losses(out / "eager")


# torch.compile through Accelerate's dynamo plugin; "reduce-overhead" adds CUDA graphs. A compilation takes
# minutes on a cold cache: each test has its own limit, and the GPU check's pytest step is sized for two.
@pytest.mark.timeout(360)
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_matches_eager(tmp_path, gpu_data, eager_losses, mode):
    result = run_with(train_command(*tiny_args(gpu_data, tmp_path, mode, *NO_DROPOUT, "run.compile=true",
                                               f"run.compile_mode={mode}")), **SAME_RANDOM)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    # Same seed, data and fp32 maths: the compiled kernels may round differently, not train differently.
    losses = train_losses(tmp_path / mode)
    assert _close(eager_losses, losses, rtol=0.05), (eager_losses, losses)
