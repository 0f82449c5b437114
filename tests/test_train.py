"""Single-process training: learning, precision, exact resume, preemption, NaN handling, run directories.

Real Accelerate, real `datasets` shards from the synthetic generator; tiny model (tests/configs/tiny.yaml).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emotionnet.exit_codes import ExitCode
from tests.training_utils import (
    EASY_OPTIMIZATION,
    REPO_ROOT,
    prepared_synthetic,
    read_jsonl,
    run,
    train_command,
    train_env,
    train_steps,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_synthetic(tmp_path_factory.mktemp("train_data"), rows=600, seed=1)


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"training exited early with {process.returncode}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for training progress")
        time.sleep(0.05)


def _assert_no_gaps_or_duplicates(steps: list[int], every: int, last: int) -> None:
    assert steps == list(range(every, last + 1, every)), steps


def test_run_directory_holds_config_metrics_checkpoints_and_exports(tmp_path, data_dir):
    result = run(train_command(f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}", "--run_name", "r",
                               "run.max_steps=20", "checkpoint.every_steps=10"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "r"
    assert (run_dir / "config.yaml").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]
    for export in ("best", "final"):
        description = json.loads((run_dir / export / "emotionnet.json").read_text())
        assert description["class_names"][1] == "disgust" and description["preprocessing"]["input_size"] == 48
        assert (run_dir / export / "model.safetensors").is_file()
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert {r["split"] for r in records} == {"train", "validation", "test"}
    validation = [r for r in records if r["split"] == "validation"][-1]
    assert validation["validation/n"] == 60  # every validation row once
    assert "test" in result.stdout


def test_existing_run_is_not_overwritten_without_resume(tmp_path, data_dir):
    args = (f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}", "--run_name", "r", "run.max_steps=10",
            "checkpoint.every_steps=10")  # fmt: skip
    assert run(train_command(*args)).returncode == 0
    again = run(train_command(*args))
    assert again.returncode == 2
    assert "already has checkpoints; pass --resume latest" in again.stderr


def test_bf16_autocast_on_cpu(tmp_path, data_dir):
    result = run(train_command(f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}", "--run_name", "bf16",
                               "run.max_steps=10", "--mixed_precision", "bf16"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(tmp_path / "bf16" / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in records if r["split"] == "train")
    assert (tmp_path / "bf16" / "config.yaml").read_text().count("mixed_precision: bf16") == 1


@pytest.mark.slow
def test_kill9_and_resume_gives_bitwise_identical_weights(tmp_path, data_dir):
    common = (f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}", "run.max_steps=60",
              "checkpoint.every_steps=20", "run.deterministic=true")  # fmt: skip
    straight = run(train_command(*common, "--run_name", "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(train_command(*common, "--run_name", "interrupted"), cwd=REPO_ROOT, env=train_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(lambda: (interrupted / "checkpoints" / "step_00000020").is_dir(), process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (interrupted / "final").exists(), "the kill came too late to test anything"

    resumed = run(train_command(*common, "--run_name", "interrupted", "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(interrupted / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    _assert_no_gaps_or_duplicates(train_steps(interrupted), every=10, last=60)
    assert train_steps(interrupted) == train_steps(tmp_path / "straight")
    # The run directory records each start: the fresh one at step 0, the resume at its checkpoint's step.
    starts = read_jsonl(interrupted / "environment.jsonl")
    assert [s["step"] for s in starts][0] == 0 and len(starts) == 2 and starts[1]["step"] in (20, 40)
    assert {(s["world_size"], s["distributed_type"], s["device"]) for s in starts} == {("1", "single", "cpu")}


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_resume_completes(tmp_path, data_dir):
    common = (f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}", "--run_name", "pre", "run.max_steps=80",
              "checkpoint.every_steps=1000")  # fmt: skip
    process = subprocess.Popen(train_command(*common), cwd=REPO_ROOT, env=train_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = tmp_path / "pre" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, process)  # past step 10
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == ExitCode.PREEMPTED, err[-3000:]
    checkpoints = sorted((tmp_path / "pre" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].name != "step_00000080"
    assert f"exiting with code {ExitCode.PREEMPTED}" in err

    resumed = run(train_command(*common, "--resume", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_no_gaps_or_duplicates(train_steps(tmp_path / "pre"), every=10, last=80)


def test_nonfinite_loss_stops_with_step_and_last_checkpoint(tmp_path, data_dir):
    result = run(train_command(f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}", "--run_name", "nan",
                               "optim.lr=1e12", "optim.grad_clip=0", "schedule.warmup_steps=0", "run.max_steps=60",
                               "checkpoint.every_steps=1000"))  # fmt: skip
    assert result.returncode == 3, result.stderr[-3000:]
    (message,) = [line for line in result.stderr.splitlines() if line.startswith("emotionnet-train:")]
    assert message.startswith("emotionnet-train: error: loss became NaN/Inf at step ")
    assert message.endswith("last good checkpoint: none saved yet")


@pytest.mark.slow
def test_one_process_learns_the_synthetic_task(tmp_path_factory):
    data = prepared_synthetic(tmp_path_factory.mktemp("learn"), rows=3000, seed=3)
    out = tmp_path_factory.mktemp("learn_out")
    result = run(train_command(f"data.data_dir={data}", f"run.output_dir={out}", "--run_name", "learn",
                               "run.num_epochs=4", "schedule.cycle_epochs=4", *EASY_OPTIMIZATION),
                 timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    best = json.loads((out / "learn" / "best" / "emotionnet.json").read_text())["metadata"]
    # Chance is 1/7. The synthetic classes overlap on purpose (a 3-layer CNN reaches ~80% after 6 epochs
    # on 4,000 faces); the tiny model gets ~55-60% in 4 short epochs.
    assert best["validation/accuracy"] > 0.45, best


def test_cli_runs_as_module_and_console_script_identically():
    help_module = subprocess.run([*train_command()[:3], "--help"], capture_output=True, text=True, cwd=REPO_ROOT,
                                 timeout=120)  # fmt: skip
    script = Path(os.environ.get("VIRTUAL_ENV", REPO_ROOT / ".venv")) / "bin" / "emotionnet-train"
    if not script.exists():
        pytest.skip("console script not installed (pip install -e .)")
    help_script = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert help_module.returncode == help_script.returncode == 0
    assert help_module.stdout == help_script.stdout


def test_seed_csv_flag_preps_once_into_a_sha256_cache(tmp_path, synth_csv):
    cache = tmp_path / "cache"
    args = ("--csv_file", str(synth_csv), f"data.prep_cache_dir={cache}", f"run.output_dir={tmp_path}",
            "run.max_steps=2", "tracking.enabled=false")  # fmt: skip
    first = run(train_command(*args, "--run_name", "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    (entry,) = cache.iterdir()
    assert json.loads((entry / "manifest.json").read_text())["source"]["sha256"].startswith(entry.name)
    shard_times = {p: p.stat().st_mtime_ns for p in entry.rglob("*.arrow")}
    second = run(train_command(*args, "--run_name", "b"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "using prepared cache" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in entry.rglob("*.arrow")} == shard_times  # reused, not rewritten
