"""Checkpoint, kill, `--resume latest` on the GPU: the loss trajectory of an uninterrupted run, within bf16 noise."""

from __future__ import annotations

import signal
import subprocess
import time

from tests.gpu.gpu_utils import GPU, run_with, tiny_args, train_losses
from tests.training_utils import REPO_ROOT, train_command, train_env, train_steps

pytestmark = GPU
STEPS, EVERY = 120, 40


def test_killed_and_resumed_run_follows_the_uninterrupted_one(tmp_path, gpu_data):
    common = ("run.mixed_precision=bf16", f"run.max_steps={STEPS}", f"checkpoint.every_steps={EVERY}")
    straight = run_with(train_command(*tiny_args(gpu_data, tmp_path, "straight", *common)))
    assert straight.returncode == 0, straight.stderr[-4000:]

    run_dir = tmp_path / "interrupted"
    command = train_command(*tiny_args(gpu_data, tmp_path, "interrupted", *common))
    with open(tmp_path / "interrupted.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=train_env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / f"step_{EVERY:08d}").is_dir():
            assert process.poll() is None, (tmp_path / "interrupted.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (run_dir / "final").exists(), "the kill came too late to test anything"

    resumed = run_with(
        train_command(*tiny_args(gpu_data, tmp_path, "interrupted", *common, "--resume", "latest"))
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert train_steps(run_dir) == train_steps(tmp_path / "straight") == list(range(10, STEPS + 1, 10))
    a, b = train_losses(tmp_path / "straight"), train_losses(run_dir)
    # Restored weights, optimizer, scheduler, RNG and data position: only CUDA's non-deterministic
    # reductions (bf16 autocast) separate the two; a lost state (fresh optimizer, warm-up again) moves
    # the loss by far more.
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
    assert worst < 0.05, (worst, a, b)
