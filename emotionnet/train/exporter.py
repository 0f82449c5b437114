"""`ModelExporter`: the model a run exports (`best/`, `final/`, snapshots), the same from every process.

Rank 0's BatchNorm buffers are shared first (each rank updated its own: DeepSpeed never syncs them, DDP
only before each forward), so every rank evaluates and exports one model. Under DeepSpeed the fp32 master
weights are gathered (ZeRO-3: their shards, on all ranks), not the bf16 copies the model computes with.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType

from emotionnet.inference.export import save_export
from emotionnet.model.emotionnet import ModelConfig
from emotionnet.train.components import Components
from emotionnet.train.replicas import broadcast_buffers, deepspeed_fp32_state


class ModelExporter:
    def __init__(self, accelerator: Accelerator, parts: Components, model_config: ModelConfig):
        self.accelerator = accelerator
        self.parts = parts
        self.model_config = model_config

    def share_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank, in the model and its EMA."""
        broadcast_buffers(self.accelerator.unwrap_model(self.parts.model))
        if self.parts.ema is not None:
            broadcast_buffers(self.parts.ema.module)

    def export(self, path: Path, metadata: dict) -> Path:
        """Write an export to `path` (safetensors + description); a collective: every rank calls it."""
        self.share_buffers()
        if self.parts.ema is not None:
            state = self.parts.ema.module.state_dict()
        elif self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            state = deepspeed_fp32_state(self.parts.model)
        else:
            state = self.accelerator.get_state_dict(self.parts.model)
        if self.accelerator.is_main_process:
            state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
            save_export(path, state, self.model_config, self.parts.preprocessing, metadata)
        self.accelerator.wait_for_everyone()
        return path
