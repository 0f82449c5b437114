"""What a run started on, recorded in its run directory whether or not MLflow tracks it.

Every start and resume appends one line to <run>/environment.jsonl (a resumed run may have moved to
other machines, another world size or another precision); the MLflow tracker tags its run with the
same facts, so the two never disagree.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the emotionnet package
VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "accelerate",
    "deepspeed",
    "mlflow",
    "transformers",
    "datasets",
    "numpy",
)


def git_state(repo: Path = PACKAGE_DIR.parent) -> dict[str, str]:
    """git.commit and git.dirty of the source tree, when it is a git checkout (an installed wheel is not)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def package_versions() -> dict[str, str]:
    versions = {"version.python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    if torch.version.cuda:
        versions["version.cuda"] = torch.version.cuda
    return versions


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def distributed_label(accelerator: Accelerator) -> str:
    """'single', 'ddp', 'deepspeed-zero2', ... for run names and tags."""
    state = accelerator.state
    if state.distributed_type == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{state.deepspeed_plugin.zero_stage}"
    if state.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        return "ddp"
    return "single"


def describe_environment(accelerator: Accelerator, hostnames: list[str]) -> dict[str, str]:
    """The hardware, processes, precision and software of a run, as flat strings (MLflow tags' shape)."""
    device = accelerator.device
    facts = {
        **git_state(),
        **package_versions(),
        "hosts": ",".join(sorted(set(hostnames))),
        "world_size": str(accelerator.num_processes),
        "distributed_type": distributed_label(accelerator),
        "precision": str(accelerator.mixed_precision),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
    }
    if job := os.environ.get("SLURM_JOB_ID"):
        facts["slurm.job_id"] = job
    return facts
