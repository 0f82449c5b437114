"""Test launcher target: train like `emotionnet-train`, then record what each rank ended with.

Writes `<run_dir>/rank<r>.json` (world size, distributed type, exit code, parameter checksum) and
`<run_dir>/params_rank<r>.pt` (trainable parameters). With EMOTIONNET_TEST_FAIL_RANK=<r>, that rank raises at its third
training step, to test that a crashing rank brings the whole launch down.
"""

from __future__ import annotations

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

code, trainer = run(sys.argv[1:])
if trainer is not None:
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.parts.model)
    # Parameters only: DeepSpeed (unlike DDP) does not synchronise BatchNorm running statistics.
    state = {k: v.detach().float().cpu().clone() for k, v in model.named_parameters()}
    torch.save(state, trainer.run_dir / f"params_rank{acc.process_index}.pt")
    facts = {
        "world_size": acc.num_processes,
        "rank": acc.process_index,
        "distributed": trainer.environment["distributed_type"],
        "exit_code": code,
        "param_dtype": str(next(trainer.parts.model.parameters()).dtype),
    }
    (trainer.run_dir / f"rank{acc.process_index}.json").write_text(json.dumps(facts))
sys.exit(code)
