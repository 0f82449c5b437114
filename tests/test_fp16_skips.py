"""fp16 steps the grad scaler skips are counted, also with fused AdamW (which the scaler always steps).

Accelerate refuses fp16 on a CPU, so the run keeps fp32 compute and is given a real `torch.amp.GradScaler`
on the CPU before its parts are prepared: the scaler scales the loss, finds the injected Inf and skips the
step inside the fused kernel, as it would under fp16 on a GPU.
"""

from __future__ import annotations

import torch

from emotionnet.config import loader
from emotionnet.config.schema import TrainConfig
from emotionnet.train.components import build_accelerator
from emotionnet.train.trainer import Trainer
from tests.training_utils import TINY_CONFIG, prepared_synthetic

INJECT_AT_CALL = 2  # the backward pass whose gradient turns Inf


def test_a_skipped_fused_step_is_counted(tmp_path):
    data = prepared_synthetic(tmp_path / "data", rows=200, seed=6)
    cfg = loader.load(
        TrainConfig,
        TINY_CONFIG,
        [f"data.data_dir={data}", f"run.output_dir={tmp_path}", "tracking.enabled=false", "run.max_steps=4",
         "optim.fused=true", "run.num_epochs=1"],
    )  # fmt: skip
    accelerator = build_accelerator(cfg)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, accelerator, tmp_path / "run")
    assert trainer.parts.optimizer.scaler is accelerator.scaler
    assert trainer.parts.optimizer.optimizer.defaults["fused"]

    *_, param = trainer.parts.model.parameters()  # the classifier's bias: its gradient comes first
    calls, before, after = [0], {}, {}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == INJECT_AT_CALL:
            before.update({k: v.clone() for k, v in trainer.parts.model.state_dict().items()})
            return torch.full_like(grad, float("inf"))
        if calls[0] == INJECT_AT_CALL + 1:
            after.update({k: v.clone() for k, v in trainer.parts.model.state_dict().items()})
        return grad

    param.register_hook(poison)
    trainer.fit()
    assert trainer.progress.step == 4
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "batches" not in k)
    assert accelerator.scaler.get_scale() == 2.0**9  # backed off once
    assert trainer.progress.skipped_steps == 1
