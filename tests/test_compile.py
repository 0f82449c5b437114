"""Compilation the Accelerate way (`run.compile` -> Accelerate's dynamo plugin, DeepSpeed's engine.compile)
and fused AdamW: the wiring, and compiled runs on the CPU with dynamo's eager backend (tracing without
code generation; what inductor and CUDA graphs add is for the GPU check, docs/compile.md)."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import DynamoBackend

from emotionnet.config import loader as config_loader
from emotionnet.config.schema import OptimConfig, TrainConfig
from emotionnet.inference.export import load_export
from emotionnet.train.components import build_accelerator
from emotionnet.train.optim import create_optimizer
from tests.training_utils import (
    ZERO3_PARTITION_ALL,
    accelerate_command,
    prepared_synthetic,
    run,
    train_command,
)

COMPILED = ("run.compile=true", "run.compile_backend=eager", "tracking.enabled=false")


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate's state is a process-wide singleton: build each accelerator from scratch."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_run_compile_goes_through_accelerates_dynamo_plugin(monkeypatch, fresh_accelerator_state):
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    cfg = config_loader.load(TrainConfig, overrides=["run.compile=true", "run.compile_mode=max-autotune"])
    plugin = build_accelerator(cfg).state.dynamo_plugin
    assert (plugin.backend, plugin.mode) == (DynamoBackend.INDUCTOR, "max-autotune")
    with pytest.raises(config_loader.ConfigError, match="compile_mode"):
        config_loader.load(TrainConfig, overrides=["run.compile_mode=fast"])


def test_run_compile_off_leaves_the_launch_configuration_alone(monkeypatch, fresh_accelerator_state):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "eager")  # what `accelerate launch --dynamo_backend` sets
    assert build_accelerator(TrainConfig()).state.dynamo_plugin.backend == DynamoBackend.EAGER


@pytest.mark.slow
def test_compiled_run_trains_resumes_and_exports(tmp_path):
    """run.compile through Accelerate (dynamo's eager backend: tracing without code generation, fast on the
    CPU); the run writes its augmentation grid, checkpoints, resumes and exports plain weights."""
    data = prepared_synthetic(tmp_path / "data", rows=200, seed=5)
    common = (f"data.data_dir={data}", f"run.output_dir={tmp_path}", "--run_name", "compiled",
              "checkpoint.every_steps=4", *COMPILED)  # fmt: skip
    first = run(train_command(*common, "run.max_steps=4"))
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "compiled"
    assert (run_dir / "reports" / "augmentations.png").is_file()
    resumed = run(train_command(*common, "run.max_steps=8", "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    model, description = load_export(run_dir / "final")
    assert description.metadata["step"] == 8
    assert not any(name.startswith("_orig_mod") for name in model.state_dict())


def test_fused_adamw_on_request():
    model = torch.nn.Linear(3, 2)
    assert create_optimizer(model, OptimConfig(), fused=True).defaults["fused"]
    assert not create_optimizer(model, OptimConfig()).defaults["fused"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("launch", "label"),
    [("cpu_multiprocess.yaml", "ddp"), pytest.param("deepspeed_zero2.yaml", "deepspeed-zero2", marks=pytest.mark.deepspeed),
     pytest.param(ZERO3_PARTITION_ALL, "deepspeed-zero3", marks=pytest.mark.deepspeed)],
    ids=["ddp", "zero2", "zero3-partitioned"],
)  # fmt: skip
def test_compiled_two_process_run(tmp_path, launch, label):
    """DDP compiles the DDP-wrapped model in `prepare`; ZeRO-2 and ZeRO-3 go through DeepSpeed's engine.compile.
    ZeRO-3 partitions every parameter: a compiled graph sees only what DeepSpeed gathered before a module's
    forward, so nn.MultiheadAttention's out_proj must be gathered with it."""
    data = prepared_synthetic(tmp_path / "data", rows=200, seed=4)
    result = run(accelerate_command(launch, 2, f"data.data_dir={data}", f"run.output_dir={tmp_path}", "--run_name",
                                    "c", "run.max_steps=6", "checkpoint.every_steps=3", "run.log_every_steps=3",
                                    *COMPILED))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    facts = [json.loads((tmp_path / "c" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [f["distributed"] for f in facts] == [label, label]
    params = [torch.load(tmp_path / "c" / f"params_rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    model, _ = load_export(tmp_path / "c" / "final")
    assert not any(name.startswith("_orig_mod") for name in model.state_dict())


def test_compiled_run_evaluates_without_compiling(tmp_path, fresh_accelerator_state):
    """Evaluation (eval mode, no grad, batches of 32 and a short last one) compiles nothing, epoch after
    epoch: training's graphs are all dynamo ever builds."""
    from torch._dynamo.utils import counters

    from tests.host_sync import tiny_trainer

    data = prepared_synthetic(tmp_path / "data", rows=200, seed=7)  # 20 validation rows: one short batch
    torch._dynamo.reset()
    trainer = tiny_trainer(data, tmp_path / "out", "run.compile=true", "run.compile_backend=eager",
                           "run.max_steps=30", "data.num_workers=0")  # fmt: skip
    evaluate, during_evaluation = trainer.evaluator.model, []

    def counted(*args, **kwargs):
        before = sum(counters["stats"].values()), sum(counters["recompiles"].values())
        result = evaluate(*args, **kwargs)
        during_evaluation.append(
            (sum(counters["stats"].values()) - before[0], sum(counters["recompiles"].values()) - before[1])
        )
        return result

    trainer.evaluator.model = counted
    trainer.fit()
    assert counters["stats"]["unique_graphs"] > 0  # training was compiled
    assert len(during_evaluation) == 2  # 16 steps an epoch: two epoch ends
    assert during_evaluation == [(0, 0), (0, 0)]
