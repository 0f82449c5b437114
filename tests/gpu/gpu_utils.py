"""What the GPU tests share: the CUDA skip, tiny-run arguments, launches with extra environment."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training_utils import REPO_ROOT, read_jsonl, train_env

# Every module of tests/gpu/ sets `pytestmark = GPU`: marked `gpu` (make gpu-check), skipped without CUDA.
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def tiny_args(data_dir: Path, out: Path, name: str, *extra: str) -> tuple[str, ...]:
    """Overrides for a short tiny-config run: no MLflow (not installed on the GPU machine)."""
    return (f"data.data_dir={data_dir}", f"run.output_dir={out}", "--run_name", name, "tracking.enabled=false",
            "run.log_every_steps=10", *extra)  # fmt: skip


def run_with(cmd: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**train_env(), **env})  # fmt: skip


def console_script(name: str) -> str:
    """A console script of this environment (on PATH, or next to the interpreter)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed (pip install --no-deps -e .)")
    return found


def train_losses(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]


def assert_finite_losses(run_dir: Path, count: int) -> list[float]:
    losses = train_losses(run_dir)
    assert len(losses) == count and all(math.isfinite(x) for x in losses), losses
    return losses


def rank0_facts(run_dir: Path) -> dict:
    """What tests/scripts/train_and_dump.py recorded for rank 0 (world size, distributed label, dtype)."""
    return json.loads((run_dir / "rank0.json").read_text())
