"""What the training-step benchmarks share: synthetic prepared data, the recipe's `Trainer` built in a worker
process, and timing its `train_step` the way the training loop runs it.

A benchmark runs each variant in a fresh `python -m <benchmark> --worker ...` process (`run_worker`):
Accelerate's state and dynamo's caches are process-global, so variants must not share a process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from data_prep.prepare import PrepOptions, prepare
from data_prep.synth import write_synthetic_csv
from emotionnet.config.recipes import load_train_config
from emotionnet.train.components import build_accelerator
from emotionnet.train.trainer import Trainer


def synthetic_data(root: Path, train_rows: int) -> Path:
    """At least `train_rows` training faces (48x48, 7 classes; 80% of the rows are Training) from
    data_prep's generator through the real prep stage; the prepared folder."""
    csv = write_synthetic_csv(root / "synthetic.csv", rows=int(train_rows / 0.8) + 50, seed=0)
    prepare(csv, root / "prepared", PrepOptions(progress=False))
    return root / "prepared"


def build_trainer(recipe: str, data: Path, out: Path, overrides: Sequence[str]) -> Trainer:
    """The recipe's Trainer (Accelerate, prepared loader, on-device augmentation, loss, optimizer,
    schedule) on `data`, untracked, writing under `out`, its model in train mode."""
    base = [f"data.data_dir={data}", "tracking.enabled=false", f"run.output_dir={out}"]
    cfg = load_train_config(recipe, [*base, *overrides])
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, build_accelerator(cfg), run_dir)
    trainer.parts.model.train()
    return trainer


def time_steps(trainer: Trainer, batches: Iterator[dict], steps: int) -> list[float]:
    """Milliseconds of each of `steps` training steps: `next(batches)` (the prepared loader's next batch,
    which Accelerate copies to the device) + `Trainer.train_step`. CUDA events around each step on a GPU
    (the host queues ahead; one synchronisation at the end), perf_counter on the CPU."""
    run = trainer.cfg.run
    cudagraphs = run.compile and run.compile_mode == "reduce-overhead"

    def step() -> None:
        if cudagraphs:
            # A new iteration: CUDA-graph outputs of the previous step may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        trainer.train_step(next(batches))

    if trainer.accelerator.device.type != "cuda":
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(1000.0 * (time.perf_counter() - start))
        return times
    events = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden arguments `run_worker` passes: the worker flag, the prepared data, a scratch folder."""
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)


class WorkerError(Exception):
    """A worker process exited with an error; `stderr` is what it wrote there."""

    def __init__(self, stderr: str):
        lines = [line for line in stderr.splitlines() if line.strip()]
        super().__init__(lines[-1].strip() if lines else "no error output")
        self.stderr = stderr


def run_worker(module: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> dict:
    """`python -m module --worker ARGS` in a fresh process: the JSON object on its last stdout line."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--worker", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
    )
    if done.returncode != 0:
        raise WorkerError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])
