"""Watch a Trainer's hot loop for host synchronisation: what a GPU would wait on between sync points.

On the CPU, `HotLoopWatch` records the operations that read a tensor back on the host
(`aten::_local_scalar_dense`: `.item()`, `bool(t)`, `.tolist()`) or build a tensor from Python data
(`aten::lift_fresh`: `torch.tensor(n, device=...)`, a host-to-device copy on a GPU), with the place in
our code that called them. On a GPU it also turns `torch.cuda.set_sync_debug_mode("error")` on for the
same stretches, so any blocking copy or synchronisation raises.

The watched stretch starts after the first training step (the optimizer creates its state then) and
excludes the sync points, which synchronise on purpose, and what runs at them.
"""

from __future__ import annotations

import collections
import functools
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from emotionnet.config import loader
from emotionnet.config.schema import TrainConfig
from emotionnet.train.components import build_accelerator
from emotionnet.train.trainer import Trainer
from tests.training_utils import REPO_ROOT

HOST_READS = ("aten::_local_scalar_dense", "aten::lift_fresh")
# Methods of the Trainer and its RunControl that run only at sync points (or before the loop): host
# syncs there are by design.
SYNC_POINT_METHODS = (
    ("control", "agree"),
    ("control", "_calibrate"),
    ("trainer", "_log_train"),
    ("trainer", "_end_epoch"),
    ("trainer", "_save_checkpoint"),
    ("trainer", "export"),
)
REPO = REPO_ROOT


class HotLoopWatch(TorchDispatchMode):
    def __init__(self, trainer: Trainer, cuda_errors: bool = False):
        super().__init__()
        self.trainer = trainer
        self.cuda_errors = cuda_errors
        self.hits: collections.Counter[tuple[str, str]] = collections.Counter()
        self._paused = 1  # until the first step has run
        for owner, name in SYNC_POINT_METHODS:
            target = trainer.control if owner == "control" else trainer
            setattr(target, name, self._paused_in(getattr(target, name)))
        first_step = trainer.train_step

        @functools.wraps(first_step)
        def train_step(batch):  # the first call only: then the class's own method again, watched
            result = first_step(batch)
            del trainer.train_step
            self._resume()
            return result

        trainer.train_step = train_step

    def _paused_in(self, method):
        @functools.wraps(method)
        def paused(*args, **kwargs):
            self._pause()
            try:
                return method(*args, **kwargs)
            finally:
                self._resume()

        return paused

    def _pause(self) -> None:
        self._paused += 1
        if self.cuda_errors:
            torch.cuda.set_sync_debug_mode("default")

    def _resume(self) -> None:
        self._paused -= 1
        if self._paused == 0 and self.cuda_errors:
            torch.cuda.set_sync_debug_mode("error")

    def _host_counters(self) -> set[int]:
        """Counters kept on the host by design, whatever the device: the optimizer's step counts (unless
        fused or capturable) and the weight EMA's update count."""
        optimizer = getattr(self.trainer.parts.optimizer, "optimizer", self.trainer.parts.optimizer)
        counters = {id(state["step"]) for state in optimizer.state.values() if "step" in state}
        if self.trainer.parts.ema is not None:
            counters.add(id(self.trainer.parts.ema.averaged.n_averaged))
        return counters

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if not self._paused and name in HOST_READS:
            if not (args and id(args[0]) in self._host_counters()):
                self.hits[(name, self._caller())] += 1
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _caller() -> str:
        ours = [
            f
            for f in traceback.extract_stack()
            if f.filename.startswith(str(REPO))
            and not f.filename.startswith((str(REPO / ".venv"), str(REPO / "tests")))
        ]
        return f"{Path(ours[-1].filename).relative_to(REPO)}:{ours[-1].lineno}" if ours else "(library)"

    def __exit__(self, *exc):
        if self.cuda_errors:
            torch.cuda.set_sync_debug_mode("default")
        return super().__exit__(*exc)


def fit_watched(trainer: Trainer, cuda_errors: bool = False) -> collections.Counter:
    """Run `trainer.fit()` under a HotLoopWatch; the host reads it saw, by operation and caller."""
    watch = HotLoopWatch(trainer, cuda_errors)
    with watch:
        trainer.fit()
    return watch.hits


def tiny_trainer(data_dir: Path, out: Path, *overrides: str) -> Trainer:
    """A Trainer of the tiny test config for 40 steps, batches from a loader worker (as in real runs)."""
    cfg = loader.load(
        TrainConfig,
        REPO_ROOT / "tests/configs/tiny.yaml",
        [f"data.data_dir={data_dir}", f"run.output_dir={out}", "tracking.enabled=false",
         "data.num_workers=1", "run.max_steps=40", *overrides],
    )  # fmt: skip
    (out / "run").mkdir(parents=True)
    return Trainer(cfg, build_accelerator(cfg), out / "run")
