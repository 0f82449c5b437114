"""A run survives a kill -9 at any moment, the end of the run included: killed inside a checkpoint write,
the last validation, the `best/` export (before and after its swap), the `final/` export and the test
evaluation, then resumed each time, it ends as the uninterrupted run ends. Also the export swap itself
(readers never find no model; what a crash leaves behind is recovered), stop signals at start-up and
during a checkpoint write, and a checkpoint that runs out of room.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_prep.files import exchange_directories, recover_staged, replace_directory
from emotionnet.exit_codes import ExitCode
from emotionnet.inference.export import load_export
from emotionnet.train.checkpoint import verify_checkpoint
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


def _signalled(moments: str, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(KILLED_AT), moments, str(run_dir), str(LAST_STEP), "--", "--config", str(TINY_CONFIG),
         *args],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=train_env(),
    )  # fmt: skip


@pytest.mark.parametrize(("sig", "code"), [("TERM", ExitCode.PREEMPTED), ("INT", ExitCode.INTERRUPTED)])
def test_a_stop_signal_during_start_up_ends_the_run_cleanly(tmp_path, prepared_300, sig, code):
    run_dir = tmp_path / "s"
    done = _signalled(f"start-up:{sig}", run_dir, *_common(prepared_300, tmp_path, "s"))
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "emotionnet-train: " in done.stderr
    assert not (run_dir / "run.lock").exists() and not (run_dir / "checkpoints").exists()


def test_sighup_checkpoints_and_exits_75_like_sigterm(tmp_path, prepared_300):
    run_dir = tmp_path / "h"
    done = _signalled("first step:HUP", run_dir, *_common(prepared_300, tmp_path, "h"))
    assert done.returncode == ExitCode.PREEMPTED, done.stderr[-3000:]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000001"]


def test_a_second_ctrl_c_during_a_checkpoint_write_exits_130_and_leaves_no_temp_directory(
    tmp_path, prepared_300
):
    run_dir = tmp_path / "c"
    # The first Ctrl-C asks for a stop (a checkpoint, then exit 75); the second comes while it is written.
    done = _signalled("first step:INT,checkpoint:INT", run_dir, *_common(prepared_300, tmp_path, "c"))
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert list((run_dir / "checkpoints").iterdir()) == []


def _file_size_limit(nbytes: int):
    """A per-file size limit for the child: past it a write fails (EFBIG) as it would on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def test_a_checkpoint_that_runs_out_of_room_is_one_line_and_the_previous_one_stays_intact(
    tmp_path, prepared_300
):
    args = _common(prepared_300, tmp_path, "full")
    first = run(train_command(*args, "run.max_steps=10"))
    assert first.returncode == 0, first.stderr[-3000:]
    # The tiny model's checkpoint holds 370 KB of weights: at 300 KB per file the step-20 one cannot be written.
    limited = subprocess.run(train_command(*args, "--resume", "latest"), capture_output=True, text=True,
                             timeout=600, cwd=REPO_ROOT, env=train_env(), preexec_fn=_file_size_limit(300_000))  # fmt: skip
    assert limited.returncode == ExitCode.BAD_INPUT, limited.stderr[-3000:]
    assert "Traceback" not in limited.stderr
    (line,) = [line for line in limited.stderr.splitlines() if line.startswith("emotionnet-train: ")]
    checkpoints = tmp_path / "full" / "checkpoints"
    assert f"{checkpoints / 'step_00000020'}: the write ran out of room" in line
    assert f"the previous checkpoint {checkpoints / 'step_00000010'} is intact" in line
    assert [p.name for p in checkpoints.iterdir()] == ["step_00000010"]
    verify_checkpoint(checkpoints / "step_00000010", 1)


def test_an_export_that_runs_out_of_room_is_one_line_and_the_previous_export_stays(tmp_path):
    # In a child limited to 100 KB per file: the export's weights (about 380 KB) cannot be written.
    script = f"""
import resource, sys
from pathlib import Path
import torch
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.errors import UserError
from emotionnet.inference.export import save_export
from emotionnet.model.emotionnet import EmotionNet, ModelConfig
config = ModelConfig(backbone_stages=3, d_model=32, depth=1, heads=2, spatial_heads=2, head_hidden=32)
model = EmotionNet(config)
best = Path({str(tmp_path / "best")!r})
save_export(best, {{"only": torch.zeros(4)}}, config, Preprocessing())
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    save_export(best, model.state_dict(), config, Preprocessing())
except UserError as err:
    print(err)
    sys.exit(2)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        done.stdout.startswith(f"{tmp_path / 'best'}: the write ran out of room (")
        and "MB needed" in done.stdout
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # the old export, no staged leftovers
    assert list(load_file(tmp_path / "best" / "model.safetensors")) == ["only"]
