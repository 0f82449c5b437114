"""Multi-process training through real `accelerate launch` on CPU (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3.

Each launch runs tests/scripts/train_and_dump.py, which trains like `emotionnet-train` and then writes
per-rank facts (world size, strategy) and parameters into the run directory.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import datasets
import pytest
import torch

from emotionnet.inference.export import load_export
from tests.training_utils import (
    EASY_OPTIMIZATION,
    accelerate_command,
    prepared_synthetic,
    read_jsonl,
    run,
    train_steps,
)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    # 600 rows -> 480 train rows = 30 global batches of 2 x 8: every row used once per epoch.
    return prepared_synthetic(tmp_path_factory.mktemp("dist_data"), rows=600, seed=2)


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory) -> Path:
    """160 training rows: 90 steps of 2 x 8 are 9 epochs, enough to see the loss fall by memorising."""
    return prepared_synthetic(tmp_path_factory.mktemp("small_data"), rows=200, seed=4)


def _facts(run_dir: Path, world_size: int) -> list[dict]:
    facts = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(world_size)]
    assert [f["world_size"] for f in facts] == [world_size] * world_size
    return facts


def _assert_same_parameters_on_all_ranks(run_dir: Path, world_size: int) -> None:
    reference = torch.load(run_dir / "params_rank0.pt", weights_only=True)
    for rank in range(1, world_size):
        other = torch.load(run_dir / f"params_rank{rank}.pt", weights_only=True)
        assert all(torch.equal(reference[k], other[k]) for k in reference), f"rank {rank} differs from rank 0"


def _train_losses(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]


def test_ddp_two_processes_split_each_epoch_and_agree(tmp_path, data_dir):
    result = run(accelerate_command("cpu_multiprocess.yaml", 2, f"data.data_dir={data_dir}",
                                    f"run.output_dir={tmp_path}", "--run_name", "ddp", "run.num_epochs=1",
                                    "run.log_sample_ids=true", "run.log_every_steps=5"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "ddp"
    assert {f["distributed"] for f in _facts(run_dir, 2)} == {"ddp"}
    _assert_same_parameters_on_all_ranks(run_dir, 2)

    seen = [
        [i for r in read_jsonl(run_dir / "samples" / f"rank{k}.jsonl") for i in r["row_ids"]] for k in (0, 1)
    ]
    assert not set(seen[0]) & set(seen[1]), "the two ranks saw a common sample"
    train_rows = datasets.load_from_disk(str(data_dir))["train"]["row_id"]
    assert sorted(seen[0] + seen[1]) == sorted(train_rows)

    validation = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "validation"]
    assert [r["validation/n"] for r in validation] == [60]  # 60 rows over 2 ranks x 32: padding not counted

    (start,) = read_jsonl(run_dir / "environment.jsonl")  # one line per start, by the main process only
    assert (start["world_size"], start["distributed_type"], start["step"]) == ("2", "ddp", 0)
    assert (
        start["hosts"] == socket.gethostname() and start["version.torch"] == torch.__version__.split("+")[0]
    )


def test_a_crashing_rank_fails_the_whole_launch_quickly(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("EMOTIONNET_TEST_FAIL_RANK", "1")
    started = time.monotonic()
    result = run(accelerate_command("cpu_multiprocess.yaml", 2, f"data.data_dir={data_dir}",
                                    f"run.output_dir={tmp_path}", "--run_name", "crash", "run.dist_timeout_s=60"),
                 timeout=300)  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert elapsed < 240, f"the launch took {elapsed:.0f} s to fail"


@pytest.mark.deepspeed
def test_deepspeed_zero2_two_processes_learns_saves_and_resumes(tmp_path, small_data_dir):
    common = (f"data.data_dir={small_data_dir}", f"run.output_dir={tmp_path}", "--run_name", "z2",
              "checkpoint.every_steps=30", "run.log_every_steps=15", "run.num_epochs=20", *EASY_OPTIMIZATION)  # fmt: skip
    first = run(accelerate_command("deepspeed_zero2.yaml", 2, *common, "run.max_steps=60"))
    assert first.returncode == 0, first.stderr[-4000:]
    run_dir = tmp_path / "z2"
    assert {f["distributed"] for f in _facts(run_dir, 2)} == {"deepspeed-zero2"}
    _assert_same_parameters_on_all_ranks(run_dir, 2)

    resumed = run(
        accelerate_command("deepspeed_zero2.yaml", 2, *common, "run.max_steps=90", "--resume", "latest")
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert train_steps(run_dir) == [15, 30, 45, 60, 75, 90]
    assert (run_dir / "checkpoints" / "step_00000090").is_dir()
    losses = _train_losses(run_dir)
    assert losses[-1] < losses[0] - 0.1, losses
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert all(r.get("train/grad_norm", 0) > 0 for r in train)  # DeepSpeed's global norm, logged


@pytest.mark.deepspeed
def test_deepspeed_zero3_bf16_two_processes(tmp_path, data_dir):
    """bf16 ZeRO-3 with an evaluation batch smaller than the training batch: DeepSpeed's micro-batch is the
    training batch, the global gradient norm is logged, and the export holds the fp32 master weights."""
    result = run(accelerate_command("deepspeed_zero3.yaml", 2, f"data.data_dir={data_dir}",
                                    f"run.output_dir={tmp_path}", "--run_name", "z3", "run.max_steps=10",
                                    "run.mixed_precision=bf16", "run.log_every_steps=5", "data.eval_batch_size=4"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    facts = _facts(tmp_path / "z3", 2)
    assert {f["distributed"] for f in facts} == {"deepspeed-zero3"}
    assert {f["param_dtype"] for f in facts} == {"torch.bfloat16"}  # DeepSpeed's own bf16, inputs cast to it
    assert {f["micro_batch"] for f in facts} == {8}  # data.batch_size, not the evaluation's 4
    norms = [
        r.get("train/grad_norm")
        for r in read_jsonl(tmp_path / "z3" / "metrics.jsonl")
        if r["split"] == "train"
    ]
    assert len(norms) == 2 and all(n is not None and 0 < n < float("inf") for n in norms), norms
    model, _ = load_export(tmp_path / "z3" / "final")  # ZeRO-3 shards gathered into a complete export
    weights = [p.detach() for p in model.parameters()]
    assert sum(w.numel() for w in weights) > 0
    # fp32 master weights: most are not bf16 numbers (the bf16 copies would all be).
    off_grid = sum(int((w != w.to(torch.bfloat16).float()).sum()) for w in weights)
    assert off_grid > 0.5 * sum(w.numel() for w in weights)
