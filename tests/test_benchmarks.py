"""The GPU benchmarks must not rot on machines without a GPU: their CPU smoke runs report every row."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.training_utils import REPO_ROOT, train_env


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=train_env(),
    )


def markdown_rows(stdout: str) -> list[list[str]]:
    """The data rows of the markdown tables (headers and separators dropped), as lists of cells."""
    lines = [
        line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| batch ")
    ]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.fixture(scope="module")
def bench_gpu_cpu_run() -> subprocess.CompletedProcess:
    """The CPU smoke run at channels_last on: the fp32 and bf16 eager variants run, each in a worker process
    that builds the fer2013 Trainer; the other precision and the compiled variants are listed as skipped."""
    result = run_python(
        "-m", "benchmarks.bench_gpu", "--cpu", "--steps", "2", "--warmup", "1", "--batch-sizes", "2",
        "--channels-last", "on", "--markdown", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_bench_gpu_cpu_smoke_times_the_trainer_step_of_every_runnable_variant(bench_gpu_cpu_run):
    stdout = bench_gpu_cpu_run.stdout
    assert "Recipe `fer2013` `data.num_workers=0`" in stdout and "`Trainer.train_step`" in stdout
    rows = markdown_rows(stdout)
    # batch, precision, compile, channels_last -> the rest of the row
    by_variant = {tuple(r[:4]): r for r in rows}
    expected = {
        ("2", precision, mode, "on")
        for precision in ("fp32", "bf16", "fp16")
        for mode in ("eager", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
    }
    assert set(by_variant) == expected and len(rows) == len(expected)
    for key, row in by_variant.items():
        median_ms, img_s, note = row[4], row[6], row[9]
        runs_on_cpu = key[1] in ("fp32", "bf16") and key[2] == "eager"
        if runs_on_cpu:
            assert float(median_ms) > 0 and float(img_s.replace(",", "")) > 0, row
        else:
            assert median_ms == "-" and note.startswith("skipped on CPU"), row


@pytest.mark.slow
def test_gpu_check_report_reads_every_row_of_the_bench_gpu_table(bench_gpu_cpu_run, tmp_path):
    output = tmp_path / "bench_gpu.txt"
    output.write_text(bench_gpu_cpu_run.stdout)
    result = run_python(str(REPO_ROOT / "scripts" / "gpu_check_report.py"), "-", "bench-gpu", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert len(figures) == 12
    assert figures["b2_bf16_eager_cl"]["median_ms"] > 0 and figures["b2_fp32_eager_cl"]["img_s"] > 0
    assert figures["b2_fp16_eager_cl"]["median_ms"] is None
    assert figures["b2_fp16_eager_cl"]["note"].startswith("skipped on CPU")


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


def test_bench_onnx_smoke_reports_agreement_and_both_runtimes():
    result = run_python("-m", "benchmarks.bench_onnx", "--synthetic", "--faces", "8", "--batch", "4",
                        "--threads", "1", "--rounds", "1", "--doc", "")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"max_logit_diff", "torch_1t_faces_s", "onnx_1t_faces_s"}
    assert last["max_logit_diff"] <= 1e-4 and last["torch_1t_faces_s"] > 0 and last["onnx_1t_faces_s"] > 0
    assert [row[0] for row in markdown_rows(result.stdout)] == ["threads", "1"]


@pytest.mark.slow
@pytest.mark.distributed
def test_bench_sync_batchnorm_times_both_settings_and_ends_with_its_json_line():
    result = run_python("-m", "benchmarks.bench_sync_batchnorm", "--processes", "2", "--steps", "6", "--warmup", "2",
                        "--repeats", "1", "--doc", "", timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["benchmark"], summary["processes"]) == ("sync_batchnorm", 2)
    assert summary["steps_per_s_on"] > 0 and summary["steps_per_s_off"] > 0
    assert summary["slowdown"] == pytest.approx(
        summary["steps_per_s_off"] / summary["steps_per_s_on"], rel=0.01
    )
    rows = [row[:2] for row in markdown_rows(result.stdout)]
    assert rows == [["sync_batchnorm", "run"], ["on", "1"], ["off", "1"], ["on", "mean"], ["off", "mean"]]
