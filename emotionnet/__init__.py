"""EmotionNet: facial emotion recognition on FER2013, from one CPU to a SLURM cluster.

Stage subpackages, each importing only those listed before it (checked by `lint-imports`):
model, data < config < inference < evaluation < train < tracking < cli.
The public names below are imported lazily, so `import emotionnet` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "EmotionNet": "emotionnet.model.emotionnet",
    "ModelConfig": "emotionnet.model.emotionnet",
    "create_model": "emotionnet.model.emotionnet",
    "TrainConfig": "emotionnet.config.schema",
    "load_train_config": "emotionnet.config.recipes",
    "Trainer": "emotionnet.train.trainer",
    "run_training": "emotionnet.train.session",
    "evaluate": "emotionnet.evaluation.evaluate",
    "EvalResult": "emotionnet.evaluation.result",
    "Ensemble": "emotionnet.inference.ensemble",
    "load_export": "emotionnet.inference.export",
    "ExitCode": "emotionnet.exit_codes",
    "UserError": "emotionnet.errors",
}
__all__ = [
    "EmotionNet",
    "Ensemble",
    "EvalResult",
    "ExitCode",
    "ModelConfig",
    "TrainConfig",
    "Trainer",
    "UserError",
    "create_model",
    "evaluate",
    "load_export",
    "load_train_config",
    "run_training",
]

if TYPE_CHECKING:
    from emotionnet.config.recipes import load_train_config
    from emotionnet.config.schema import TrainConfig
    from emotionnet.errors import UserError
    from emotionnet.evaluation.evaluate import evaluate
    from emotionnet.evaluation.result import EvalResult
    from emotionnet.exit_codes import ExitCode
    from emotionnet.inference.ensemble import Ensemble
    from emotionnet.inference.export import load_export
    from emotionnet.model.emotionnet import EmotionNet, ModelConfig, create_model
    from emotionnet.train.session import run_training
    from emotionnet.train.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'emotionnet' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
