"""Helpers for the training tests: prepared synthetic data, launch commands, run-directory readers."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from data_prep.prepare import PrepOptions, prepare
from data_prep.synth import write_synthetic_csv
from emotionnet.model.emotionnet import ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny.yaml"
DUMP_SCRIPT = REPO_ROOT / "tests" / "scripts" / "train_and_dump.py"
# A small EmotionNet for tests that need an export, not a trained model.
TINY_MODEL = ModelConfig(backbone_stages=3, d_model=16, depth=1, heads=2, spatial_heads=2, head_hidden=16)
# No augmentation or label smoothing and a higher learning rate: learning shows within a few hundred steps.
EASY_OPTIMIZATION = ("optim.lr=1e-3", "loss.label_smoothing=0", "augment.rotation_degrees=0",
                     "augment.affine_translate=0", "augment.affine_shear=0", "augment.affine_scale=null",
                     "augment.erasing_p=0")  # fmt: skip


def prepared_synthetic(directory: Path, rows: int, seed: int = 0) -> Path:
    """A synthetic FER2013 CSV prepped into Arrow shards under `directory`; returns the dataset dir."""
    csv = write_synthetic_csv(directory / "synth.csv", rows=rows, seed=seed)
    prepare(csv, directory / "prepared", PrepOptions(progress=False))
    return directory / "prepared"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_env() -> dict[str, str]:
    """Single-threaded BLAS/OpenMP: bitwise-repeatable CPU runs and no oversubscription with 2 processes."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "emotionnet.cli.train", "--config", str(TINY_CONFIG), *args]


# The shipped ZeRO-3 launch with `stage3_param_persistence_threshold: 0`: every parameter partitioned. The
# shipped threshold keeps the tiny test model's small parameters whole on every rank, sharding nothing.
ZERO3_PARTITION_ALL = "deepspeed_zero3_partition_all"


@functools.cache
def _zero3_partition_all() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="emotionnet-zero3-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    deepspeed = json.loads((REPO_ROOT / "configs" / "deepspeed" / "zero3.json").read_text())
    deepspeed["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (directory / "zero3.json").write_text(json.dumps(deepspeed))
    launch = (REPO_ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml").read_text()
    assert "configs/deepspeed/zero3.json" in launch
    launch = launch.replace("configs/deepspeed/zero3.json", str(directory / "zero3.json"))
    (directory / "accelerate.yaml").write_text(launch)
    return directory / "accelerate.yaml"


def launch_config(name: str) -> Path:
    """An accelerate config of configs/accelerate by file name, or the generated ZERO3_PARTITION_ALL."""
    return (
        _zero3_partition_all() if name == ZERO3_PARTITION_ALL else REPO_ROOT / "configs" / "accelerate" / name
    )


def accelerate_command(accelerate_config: str, num_processes: int, *script_args: str) -> list[str]:
    """`accelerate launch` of the dump script (trains, then saves per-rank parameters and facts)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(launch_config(accelerate_config)),
        "--num_processes", str(num_processes),
        "--main_process_port", str(free_port()),
        str(DUMP_SCRIPT), "--config", str(TINY_CONFIG), *script_args,
    ]  # fmt: skip


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=train_env()
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]
