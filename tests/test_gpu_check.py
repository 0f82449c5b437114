"""The GPU check must not rot between GPU runs: its CPU dry run, the kit's FER2013 codec and size check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.training_utils import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"
# Every check of scripts/gpu_check.sh, each in the JSON whatever the mode (skipped ones with a reason).
CHECKS = {"install", "data", "pytest_gpu", "bench_gpu_b8", "bench_augment", "recipe", "bench_gpu_b64"}


def run_script(*args, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, env={**os.environ, **env})  # fmt: skip


def test_codec_round_trip_is_byte_identical(tmp_path, synth_csv):
    stem = tmp_path / "kit" / "fer"
    encoded = run_script(SCRIPTS / "gpu_fer_codec.py", "encode", synth_csv, stem)
    assert encoded.returncode == 0, encoded.stderr
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta["rows"] == 300 and meta["usage_counts"] == {
        "Training": 240,
        "PublicTest": 30,
        "PrivateTest": 30,
    }
    assert stem.with_suffix(".xz").stat().st_size < 0.9 * meta["raw_pixel_bytes"]
    decoded = run_script(SCRIPTS / "gpu_fer_codec.py", "decode", stem, tmp_path / "out.csv")
    assert decoded.returncode == 0, decoded.stderr
    assert (tmp_path / "out.csv").read_bytes() == synth_csv.read_bytes()
    assert meta["csv_sha256"] == meta["source_sha256"]


def test_codec_refuses_a_checksum_mismatch_and_writes_nothing(tmp_path, synth_csv):
    stem = tmp_path / "fer"
    assert run_script(SCRIPTS / "gpu_fer_codec.py", "encode", synth_csv, stem).returncode == 0
    meta = json.loads(stem.with_suffix(".json").read_text())
    stem.with_suffix(".json").write_text(json.dumps({**meta, "content_sha256": "0" * 64}))
    decoded = run_script(SCRIPTS / "gpu_fer_codec.py", "decode", stem, tmp_path / "out.csv")
    assert decoded.returncode == 2
    assert decoded.stderr.count("\n") == 1 and "decoded pixels+labels+usage sha256" in decoded.stderr
    assert not (tmp_path / "out.csv").exists()


def test_codec_names_the_bad_row(tmp_path, synth_csv):
    lines = synth_csv.read_text().splitlines(keepends=True)
    emotion, pixels, usage = lines[2].split(",")
    lines[2] = ",".join([emotion, pixels.rsplit(" ", 1)[0], usage])  # 2303 values
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(lines))
    encoded = run_script(SCRIPTS / "gpu_fer_codec.py", "encode", bad, tmp_path / "fer")
    assert encoded.returncode == 2
    assert (
        encoded.stderr
        == f"gpu_fer_codec: {bad}: line 3: pixels must be 2304 integers 0..255, got 2303 values\n"
    )


def test_kit_size_check_fails_clearly_over_budget(tmp_path):
    result = run_script(
        SCRIPTS / "gpu_kit.py", "--size-only", "--out", tmp_path / "kit", "--budget-mib", "0.01"
    )
    assert result.returncode == 1
    assert "tree (tracked + untracked, not ignored)" in result.stdout
    assert result.stderr.startswith("gpu_kit: over budget by ")
    # Under budget (generous here: the working tree's own size is not this test's business).
    roomy = run_script(
        SCRIPTS / "gpu_kit.py", "--size-only", "--out", tmp_path / "kit", "--budget-mib", "1e6"
    )
    assert roomy.returncode == 0, roomy.stderr


@pytest.mark.slow
@pytest.mark.serial  # each check runs under a time limit
def test_cpu_dry_run_reports_every_check_and_none_failed(tmp_path):
    out = tmp_path / "out"
    # No kit (as in CI): synthetic data; the installer finds everything already there.
    env = {**os.environ, "CPU": "1", "OUT": str(out), "KIT": str(tmp_path / "no-kit"), "PYTHON": sys.executable,
           "TMPDIR": str(tmp_path)}  # fmt: skip
    done = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True, timeout=600,
                          cwd=REPO_ROOT, env=env)  # fmt: skip
    report = json.loads((out / "gpu_check.json").read_text())
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    failed = {c["name"]: c.get("error", "")[-1500:] for c in report["checks"] if c["status"] == "fail"}
    assert done.returncode == 0 and not failed, (failed, done.stdout[-3000:])
    assert CHECKS <= statuses.keys(), statuses
    assert report["mode"] == "cpu" and report["versions"]["torch"] and report["summary"]["fail"] == 0
    gpu_tests = [name for name in statuses if name.startswith("pytest:tests/gpu/")]
    assert gpu_tests and all(statuses[name] == "skip" for name in gpu_tests)  # no CUDA here
    assert statuses["bench_gpu_b64"] == "skip"
    bench = next(c for c in report["checks"] if c["name"] == "bench_gpu_b8")["figures"]
    assert bench.keys() == {"b8_bf16_eager"} and bench["b8_bf16_eager"]["median_ms"] > 0
    recipe = next(c for c in report["checks"] if c["name"] == "recipe")["figures"]
    assert recipe["exit_code"] == 0 and recipe["validations"] >= 1 and recipe["best_accuracy"] is not None
    assert (out / "recipe_model.tar.gz").stat().st_size == recipe["model_tar_bytes"]
    assert "gpu-check: " in (out / "gpu_check.log").read_text()
