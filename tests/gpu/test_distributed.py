"""`accelerate launch` on one GPU: DDP over NCCL, DeepSpeed ZeRO-2 and ZeRO-3 (bf16), ZeRO-2 compiled."""

from __future__ import annotations

import re

import pytest
from safetensors.torch import load_file

from tests.gpu.gpu_utils import GPU, assert_finite_losses, rank0_facts, run_with, tiny_args
from tests.training_utils import ZERO3_PARTITION_ALL, accelerate_command

pytestmark = GPU


def test_ddp_world_size_one_uses_nccl(tmp_path, gpu_data):
    # NCCL_DEBUG / TORCH_CPP_LOG_LEVEL make NCCL and ProcessGroupNCCL announce themselves; gloo says neither.
    result = run_with(accelerate_command("ddp.yaml", 1, *tiny_args(gpu_data, tmp_path, "ddp", "run.max_steps=20")),
                      NCCL_DEBUG="INFO", TORCH_CPP_LOG_LEVEL="INFO")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    facts = rank0_facts(tmp_path / "ddp")
    assert (facts["world_size"], facts["distributed"], facts["exit_code"]) == (1, "ddp", 0), facts
    assert re.search(r"NCCL INFO|ProcessGroupNCCL", result.stdout + result.stderr), result.stderr[-4000:]
    assert_finite_losses(tmp_path / "ddp", count=2)


# ZeRO-3 with every parameter partitioned: the tiny model's are all under the shipped persistence threshold.
@pytest.mark.parametrize(("stage", "launch"), [(2, "deepspeed_zero2.yaml"), (3, ZERO3_PARTITION_ALL)])
def test_deepspeed_zero_bf16_one_gpu(tmp_path, gpu_data, stage, launch):
    name = f"zero{stage}"
    result = run_with(accelerate_command(launch, 1, *tiny_args(
        gpu_data, tmp_path, name, "run.max_steps=20", "run.mixed_precision=bf16", "checkpoint.every_steps=10")))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    facts = rank0_facts(tmp_path / name)
    assert (facts["distributed"], facts["param_dtype"]) == (f"deepspeed-zero{stage}", "torch.bfloat16"), facts
    assert_finite_losses(tmp_path / name, count=2)
    assert (tmp_path / name / "checkpoints" / "step_00000020").is_dir()
    weights = load_file(tmp_path / name / "final" / "model.safetensors")
    assert weights and all(t.numel() > 0 for t in weights.values())  # ZeRO-3 shards gathered, none left empty


def test_deepspeed_zero2_compiled(tmp_path, gpu_data):
    result = run_with(accelerate_command("deepspeed_zero2.yaml", 1, *tiny_args(
        gpu_data, tmp_path, "z2c", "run.max_steps=20", "run.mixed_precision=bf16", "run.compile=true")))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert rank0_facts(tmp_path / "z2c")["distributed"] == "deepspeed-zero2"
    assert_finite_losses(tmp_path / "z2c", count=2)
