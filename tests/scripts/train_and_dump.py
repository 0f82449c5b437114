"""Test launcher target: train like `emotionnet-train`, then record what each rank ended with.

Writes `<run_dir>/rank<r>.json` (world size, distributed type, exit code, DeepSpeed's micro-batch, ZeRO-3's
partitioning) and
`<run_dir>/params_rank<r>.pt` (the model's parameters and buffers as the rank holds them after the final
export). With EMOTIONNET_TEST_FAIL_RANK=<r>, that rank raises at its third
training step, to test that a crashing rank brings the whole launch down.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch

from emotionnet.cli.train import run
from emotionnet.train.trainer import Trainer

FAIL_RANK = os.environ.get("EMOTIONNET_TEST_FAIL_RANK")


def _fail_on_third_step(original):
    calls = {"n": 0}

    def step(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError(f"injected failure on rank {self.accelerator.process_index}")
        return original(self, batch)

    return step


if FAIL_RANK is not None and os.environ.get("RANK") == FAIL_RANK:
    Trainer.train_step = _fail_on_third_step(Trainer.train_step)


def full_state(model: torch.nn.Module, zero3: bool) -> dict[str, torch.Tensor]:
    """Parameters and buffers as this rank holds them (ZeRO-3: its shards gathered, a collective)."""
    gathered = contextlib.nullcontext()
    if zero3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(model.parameters()))
    with gathered:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _dump_state_after(export_final):
    """Each rank's state right after the final export, while the process group still lives."""

    def dumped(self):
        path = export_final(self)
        model = self.accelerator.unwrap_model(self.parts.model)
        state = full_state(model, zero3=self.environment["distributed_type"] == "deepspeed-zero3")
        torch.save(state, self.run_dir / f"params_rank{self.accelerator.process_index}.pt")
        return path

    return dumped


Trainer.export_final = _dump_state_after(Trainer.export_final)


def zero3_partitioning(model: torch.nn.Module) -> dict:
    """How many parameters ZeRO-3 keeps whole on every rank, and the share of all elements this rank holds."""
    params = list(model.parameters())
    return {
        "persistent_params": sum(bool(p.ds_persist) for p in params),
        "held_fraction": sum(p.ds_tensor.numel() for p in params) / sum(p.ds_numel for p in params),
    }


code, trainer = run(sys.argv[1:])
if trainer is not None:
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.parts.model)
    distributed = trainer.environment["distributed_type"]
    deepspeed_engine = distributed.startswith("deepspeed")
    facts = {
        "world_size": acc.num_processes,
        "rank": acc.process_index,
        "distributed": distributed,
        "exit_code": code,
        "param_dtype": str(next(trainer.parts.model.parameters()).dtype),
        "micro_batch": trainer.parts.model.train_micro_batch_size_per_gpu() if deepspeed_engine else None,
        "sync_batchnorm": any("SyncBatchNorm" in type(m).__name__ for m in model.modules()),
        "zero3": zero3_partitioning(model) if distributed == "deepspeed-zero3" else None,
    }
    (trainer.run_dir / f"rank{acc.process_index}.json").write_text(json.dumps(facts))
sys.exit(code)
