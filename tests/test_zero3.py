"""ZeRO-3 that shards: every parameter partitioned (`stage3_param_persistence_threshold: 0`), 2 and 4 processes.

A run SIGKILLed after a checkpoint resumes to the uninterrupted run's result bit for bit; its export holds the
consolidated fp32 weights (those DeepSpeed's own zero_to_fp32 rebuilds from the checkpoint's shards), and
`emotionnet-eval` / `emotionnet-predict` use that export. The partitioned attention (`nn.MultiheadAttention`
reads `out_proj.weight` outside `out_proj`'s forward) also follows one process step by step
(test_equivalence.py) and trains compiled (test_compile.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import cv2
import datasets
import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file

from emotionnet.cli.eval import main as eval_main
from emotionnet.cli.predict import main as predict_main
from emotionnet.exit_codes import ExitCode
from tests.training_utils import (
    REPO_ROOT,
    ZERO3_PARTITION_ALL,
    accelerate_command,
    prepared_synthetic,
    read_jsonl,
    run,
    train_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.deepspeed]

STEPS, EVERY = 24, 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    # 480 training rows: 30 steps per epoch with 2 processes, 15 with 4 (the resume lands mid-epoch).
    return prepared_synthetic(tmp_path_factory.mktemp("zero3_data"), rows=600, seed=2)


def _args(data_dir: Path, out: Path, name: str) -> tuple[str, ...]:
    return (f"data.data_dir={data_dir}", f"run.output_dir={out}", "--run_name", name, f"run.max_steps={STEPS}",
            f"checkpoint.every_steps={EVERY}", "run.log_every_steps=4", "run.mixed_precision=no",
            "tracking.enabled=false")  # fmt: skip


def _killed_after_first_checkpoint(command: list[str], run_dir: Path, log: Path) -> None:
    """Launch, wait for the first periodic checkpoint, then SIGKILL every process, the launcher and its
    workers (torchrun starts each worker in a session of its own), as a lost node would."""
    first = run_dir / "checkpoints" / f"step_{EVERY:08d}"  # renamed into place complete
    with log.open("w") as out:
        launch = subprocess.Popen(command, cwd=REPO_ROOT, env=train_env(), stdout=out, stderr=out,
                                  start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 400
        while not first.is_dir() and launch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = [psutil.Process(launch.pid), *psutil.Process(launch.pid).children(recursive=True)]
        for process in tree:
            process.kill()
        psutil.wait_procs(tree, timeout=60)
    assert first.is_dir(), log.read_text()[-4000:]
    assert not (run_dir / "final").exists(), "the run ended before the kill"


def _train_losses(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]


@pytest.mark.parametrize("world", [2, 4])
def test_a_sharded_run_killed_after_a_checkpoint_resumes_bitwise_and_its_export_serves(
    tmp_path, data_dir, world, capsys
):
    whole = run(accelerate_command(ZERO3_PARTITION_ALL, world, *_args(data_dir, tmp_path, "whole")))
    assert whole.returncode == 0, whole.stderr[-4000:]
    facts = [json.loads((tmp_path / "whole" / f"rank{r}.json").read_text()) for r in range(world)]
    assert {(f["world_size"], f["distributed"]) for f in facts} == {(world, "deepspeed-zero3")}
    for f in facts:  # every parameter sharded: each rank holds about 1/world of the elements
        assert f["zero3"]["persistent_params"] == 0, f
        assert f["zero3"]["held_fraction"] < 1 / world + 0.01, f

    killed = accelerate_command(ZERO3_PARTITION_ALL, world, *_args(data_dir, tmp_path, "killed"))
    _killed_after_first_checkpoint(killed, tmp_path / "killed", tmp_path / "killed.log")
    resumed = run([*killed, "--resume", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    a, b = tmp_path / "whole", tmp_path / "killed"
    first_start, again = read_jsonl(b / "environment.jsonl")  # one line per start
    assert first_start["step"] == 0 and EVERY <= again["step"] < STEPS  # resumed, not begun anew
    assert _train_losses(b) == _train_losses(a) and len(_train_losses(a)) == STEPS // 4
    for export in ("final", "best"):
        expected, got = (
            load_file(a / export / "model.safetensors"),
            load_file(b / export / "model.safetensors"),
        )
        assert got.keys() == expected.keys()
        assert not [k for k in expected if not torch.equal(got[k], expected[k])], f"{export}/ differs"

    # The export is the consolidated fp32 model: what DeepSpeed's zero_to_fp32 makes of the last checkpoint.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(a / "checkpoints" / f"step_{STEPS:08d}"))
    exported = load_file(a / "final" / "model.safetensors")
    assert consolidated and all(
        v.dtype == torch.float32 for v in consolidated.values() if v.is_floating_point()
    )
    assert not [k for k in consolidated if not torch.equal(exported[k], consolidated[k])]

    # emotionnet-eval from the export reproduces the run's own test figures (best/, no TTA).
    (test_record,) = [r for r in read_jsonl(a / "metrics.jsonl") if r["split"] == "test"]
    capsys.readouterr()
    assert eval_main([str(a / "best"), str(data_dir), "--split", "test", "--json", "--no-progress",
                      "--confusion-png", str(tmp_path / "confusion.png")]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == test_record["test/n"]
    assert summary["accuracy"] == pytest.approx(test_record["test/accuracy"], abs=1e-6)

    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.asarray(datasets.load_from_disk(str(data_dir))["test"][0]["image"], np.uint8))
    assert predict_main(["--model", str(a / "final"), str(face), "--json", "--no-progress"]) == ExitCode.OK
    (image,) = json.loads(capsys.readouterr().out)["images"]
    assert sum(image["faces"][0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
