"""The GPU benchmarks must not rot on machines without a GPU: their CPU smoke runs report every row."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.training_utils import REPO_ROOT, train_env

HEAVY_MODULES = ("datasets", "mlflow", "deepspeed")


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=train_env()
    )


def markdown_rows(stdout: str) -> list[list[str]]:
    """The data rows of the markdown tables (headers and separators dropped), as lists of cells."""
    lines = [
        line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| batch ")
    ]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_bench_gpu_cpu_smoke_reports_every_variant():
    result = run_python(
        "-m", "benchmarks.bench_gpu", "--cpu", "--steps", "2", "--warmup", "1", "--batch-sizes", "2", "--markdown"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    model_table, full_table = result.stdout.split("Full training step")[-2:]
    (full_row,) = markdown_rows(full_table)  # --full-step eager: one row, first precision and layout
    assert full_row[:4] == ["2", "fp32", "eager", "off"] and float(full_row[6].replace(",", "")) > 0
    rows = markdown_rows(model_table)
    # batch, precision, compile, channels_last -> the rest of the row
    by_variant = {tuple(r[:4]): r for r in rows}
    expected = {
        ("2", precision, mode, layout)
        for precision in ("fp32", "bf16", "fp16")
        for mode in ("eager", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
        for layout in ("off", "on")
    }
    assert set(by_variant) == expected and len(rows) == len(expected)
    for key, row in by_variant.items():
        median_ms, img_s, note = row[4], row[6], row[9]
        runs_on_cpu = key[1] in ("fp32", "bf16") and key[2] == "eager"
        if runs_on_cpu:
            assert float(median_ms) > 0 and float(img_s.replace(",", "")) > 0, row
        else:
            assert median_ms == "-" and note.startswith("skipped on CPU"), row


def test_bench_gpu_imports_only_torch_side_modules():
    """The GPU machine has torch/torchvision only: the benchmark must not pull the data or tracking stacks."""
    probe = "import sys, benchmarks.bench_gpu; print(sorted(m for m in {0!r} if m in sys.modules))"
    result = run_python("-c", probe.format(HEAVY_MODULES))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_bench_gpu_without_cuda_says_so():
    result = run_python("-m", "benchmarks.bench_gpu")
    assert result.returncode == 2
    assert result.stderr.strip() == "bench_gpu: no CUDA device visible; pass --cpu for a smoke run on the CPU"


def test_bench_augment_smoke_ends_with_the_batch_8_json():
    result = run_python("-m", "benchmarks.bench_augment", "--device", "cpu", "--batch-sizes", "8,2", "--rounds", "1",
                        "--seconds", "0.01", "--no-kornia", "--doc", "")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"batch", "device", "per_face_faces_s", "batched_faces_s", "ratio"}
    assert (last["batch"], last["device"]) == (8, "cpu") and last["per_face_faces_s"] > 0
    assert last["ratio"] == pytest.approx(last["batched_faces_s"] / last["per_face_faces_s"], rel=0.01)
    assert [row[0] for row in markdown_rows(result.stdout)] == ["8", "2"]


@pytest.mark.slow
def test_bench_train_cpu_times_the_real_step_and_ends_with_its_json_line():
    result = run_python(
        "-m", "benchmarks.bench_train_cpu", "--rounds", "1", "--steps", "2", "--warmup", "1", "--synthetic",
        "--doc", "",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["baseline_img_s"] > 0 and summary["new_img_s"] > 0
    assert summary["ratio"] == pytest.approx(summary["new_img_s"] / summary["baseline_img_s"], rel=0.01)
    assert "| baseline | `run.channels_last=false` `optim.fused=false` |" in result.stdout
