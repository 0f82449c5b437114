"""A run survives a kill -9 at any moment, the end of the run included: killed inside a checkpoint write,
the last validation, the `best/` export (before and after its swap), the `final/` export and the test
evaluation, then resumed each time, it ends as the uninterrupted run ends. Also the export swap itself:
readers never find no model, and what a crash leaves behind is recovered.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_prep.files import exchange_directories, recover_staged, replace_directory
from emotionnet.exit_codes import ExitCode
from emotionnet.inference.export import load_export
from tests.training_utils import REPO_ROOT, TINY_CONFIG, read_jsonl, run, train_command, train_env

KILLED_AT = REPO_ROOT / "tests" / "scripts" / "train_killed_at.py"
LAST_STEP = 20  # within the first epoch (30 steps): its one validation always exports best/
# In the order a run reaches them: each kill comes in the attempt that resumes the one killed before.
# "best swapped" needs a best/ to swap with: "best exported" leaves one, before the checkpoint that follows.
MOMENTS = (
    "checkpoint",
    "last validation",
    "best staged",
    "best exported",
    "best swapped",
    "final export",
    "test",
)


def _common(data_dir: Path, output_dir: Path, name: str) -> list[str]:
    return [f"data.data_dir={data_dir}", f"run.output_dir={output_dir}", "--run_name", name,
            f"run.max_steps={LAST_STEP}", "checkpoint.every_steps=10", "checkpoint.keep_last=4",
            "run.deterministic=true", "tracking.enabled=false"]  # fmt: skip


@pytest.mark.slow
def test_a_run_killed_at_every_moment_of_its_end_resumes_to_the_uninterrupted_result(tmp_path, prepared_300):
    straight = run(train_command(*_common(prepared_300, tmp_path, "straight")))
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "killed"
    for attempt, moment in enumerate(MOMENTS):
        args = _common(prepared_300, tmp_path, "killed") + (["--resume", "latest"] if attempt else [])
        killed = subprocess.run(
            [sys.executable, str(KILLED_AT), moment, str(run_dir), str(LAST_STEP), "--", "--config",
             str(TINY_CONFIG), *args],
            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=train_env(),
        )  # fmt: skip
        assert killed.returncode == -9, f"not killed at {moment!r}: {killed.stderr[-3000:]}"

    resumed = run(train_command(*_common(prepared_300, tmp_path, "killed"), "--resume", "latest"))
    assert resumed.returncode == ExitCode.OK, resumed.stderr[-3000:]
    for export in ("best", "final"):
        load_export(run_dir / export)  # loadable
        a = load_file(tmp_path / "straight" / export / "model.safetensors")
        b = load_file(run_dir / export / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), f"{export}/ differs from the uninterrupted run's"
    tests = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "test"]
    straight_tests = [r for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if r["split"] == "test"]
    assert tests and [r["test/accuracy"] for r in tests] == [r["test/accuracy"] for r in straight_tests]
    assert not [p.name for p in run_dir.rglob(".*") if p.name != "run.lock"], "staged leftovers"


def _export(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "weights").write_text(text)
    return path


def test_a_replaced_directory_is_never_missing(tmp_path):
    target = _export(tmp_path / "best", "old")
    staged = _export(tmp_path / ".best.abcd1234", "new")
    assert exchange_directories(staged, target)  # one atomic rename: `best` is always there
    assert (target / "weights").read_text() == "new" and (staged / "weights").read_text() == "old"
    replace_directory(_export(tmp_path / ".best.efgh5678", "newer"), target)
    assert (target / "weights").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.abcd1234", "best"]


def test_recovery_puts_back_an_export_moved_aside_and_removes_staged_ones(tmp_path):
    # A crash between the two renames where the file system cannot swap: only `.best.old` is left.
    _export(tmp_path / ".best.old", "old")
    _export(tmp_path / ".best.x1y2z3w4", "half-written")
    _export(tmp_path / "final", "final")
    _export(tmp_path / ".final.q1w2e3r4", "staged")
    recover_staged(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "final"]
    assert (tmp_path / "best" / "weights").read_text() == "old"
    assert (tmp_path / "final" / "weights").read_text() == "final"
