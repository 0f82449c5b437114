"""Training under hostile inputs and faults: contained run names, checkpoints that run no code and
are verified before they are trusted, one live run per run directory, torn logs, validation before side
effects, and prompt SIGTERM handling. docs/reliability.md lists each promise with its test here.

Real Accelerate and `datasets` shards from the synthetic generator; the tiny model of tests/configs/tiny.yaml.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emotionnet.cli.train import run as train_run
from emotionnet.config.recipes import load_train_config
from emotionnet.exit_codes import ExitCode
from emotionnet.train.callbacks import TrainerCallback
from emotionnet.train.checkpoint import CheckpointError, verify_checkpoint, write_manifest
from emotionnet.train.metrics_log import MetricsLog, MetricsLogError
from emotionnet.train.run_lock import RunBusyError, RunLock
from emotionnet.train.session import run_training
from tests.training_utils import REPO_ROOT, TINY_CONFIG, prepared_synthetic, run, train_command, train_env

PROG = "emotionnet-train:"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_synthetic(tmp_path_factory.mktemp("reliability_data"), rows=300, seed=5)


def _args(data_dir: Path, output_dir: Path, *overrides: str) -> list[str]:
    return ["--config", str(TINY_CONFIG), f"data.data_dir={data_dir}", f"run.output_dir={output_dir}",
            "tracking.enabled=false", *overrides]  # fmt: skip


def train(data_dir: Path, output_dir: Path, *overrides: str):
    """An in-process `emotionnet-train` run, untracked; returns (exit code, trainer or None)."""
    return train_run(_args(data_dir, output_dir, *overrides))


def one_error_line(err: str) -> str:
    """The single `emotionnet-train: ...` line a user error prints, with no traceback."""
    assert "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith(PROG)]
    return line


@pytest.fixture(scope="module")
def checkpointed(data_dir, tmp_path_factory) -> Path:
    """An output directory with run `r` checkpointed at steps 2 and 4 (copy it before changing it)."""
    output_dir = tmp_path_factory.mktemp("checkpointed")
    code, _ = train(data_dir, output_dir, "--run_name", "r", "run.max_steps=4", "checkpoint.every_steps=2",
                    "checkpoint.keep_last=3")  # fmt: skip
    assert code == ExitCode.OK
    return output_dir


@pytest.fixture
def outputs(checkpointed, tmp_path) -> Path:
    """A private copy of the checkpointed output directory."""
    return Path(shutil.copytree(checkpointed, tmp_path / "outputs"))


def step_dir(outputs: Path, step: int) -> Path:
    return outputs / "r" / "checkpoints" / f"step_{step:08d}"


@pytest.fixture
def restore_signal_handlers():
    """In-process runs install SIGTERM/SIGUSR1 handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


# ---- 1: run names stay inside the output directory --------------------------------------------------


@pytest.mark.parametrize("name", ["../../escape", "<absolute>", "a/b", ".hidden", "-x", "a\nb"])
def test_run_name_that_is_not_one_safe_path_component_is_refused_before_anything_is_written(
    tmp_path, data_dir, capsys, name
):
    name = name.replace("<absolute>", str(tmp_path / "escape"))
    output_dir = tmp_path / "deep" / "out"
    code, _ = train(data_dir, output_dir, f"--run_name={name}", "run.max_steps=1")
    assert code == ExitCode.BAD_INPUT
    assert "is not a run name" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "deep").exists() and not (tmp_path / "escape").exists()


def test_resume_from_a_checkpoint_outside_the_output_dir_is_refused(outputs, tmp_path, data_dir, capsys):
    elsewhere = tmp_path / "elsewhere"
    code, _ = train(data_dir, elsewhere, "--resume", str(step_dir(outputs, 4)))
    assert code == ExitCode.BAD_INPUT
    line = one_error_line(capsys.readouterr().err)
    assert f"is not in run.output_dir {elsewhere}" in line and f"run.output_dir={outputs}" in line
    assert not elsewhere.exists()


# ---- 2: nothing in a checkpoint runs code -------------------------------------------------------------


class _TouchesMarkerWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


def plant(checkpoint: Path, name: str, marker: Path) -> None:
    """Replace `name` with a pickle that creates `marker` if unpickled, and re-sign the manifest as an
    attacker with write access to the run directory would."""
    torch.save({"payload": _TouchesMarkerWhenUnpickled(marker)}, checkpoint / name)
    if (checkpoint / "manifest.json").is_file():
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        write_manifest(checkpoint, manifest["step"], manifest["num_processes"])


def test_a_planted_custom_state_pickle_is_never_loaded(outputs, tmp_path, data_dir, caplog):
    marker = tmp_path / "code-ran"
    plant(step_dir(outputs, 4), "custom_checkpoint_0.pkl", marker)
    with caplog.at_level(logging.WARNING):
        code, trainer = train(data_dir, outputs, "--run_name", "r", "--resume", "latest", "run.max_steps=6")
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert code == ExitCode.OK and trainer.progress.step == 6
    assert any(m.startswith(f"skipping checkpoint {step_dir(outputs, 4)}: custom_checkpoint_0.pkl is a pickle")
               for m in caplog.messages)  # fmt: skip
    assert not list(step_dir(outputs, 6).glob("custom_checkpoint_*")), "trainer state is JSON, not a pickle"
    assert json.loads((step_dir(outputs, 6) / "trainer_state.json").read_text())["progress"]["step"] == 6


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin", "scheduler.bin"])
def test_a_checkpoint_pickle_that_is_not_plain_data_is_refused(outputs, tmp_path, data_dir, capsys, name):
    marker = tmp_path / "code-ran"
    plant(step_dir(outputs, 4), name, marker)
    code, _ = train(data_dir, outputs, "--resume", str(step_dir(outputs, 4)))
    assert code == ExitCode.BAD_INPUT
    assert "step_00000004" in one_error_line(capsys.readouterr().err)
    assert not marker.exists(), "unpickling the checkpoint ran code"


def test_a_deepspeed_file_that_is_not_plain_data_is_refused(outputs, tmp_path):
    """DeepSpeed loads its own *.pt files with weights_only=False: they must pass the restricted unpickler."""
    marker = tmp_path / "code-ran"
    (step_dir(outputs, 4) / "pytorch_model").mkdir()
    plant(step_dir(outputs, 4), "pytorch_model/mp_rank_00_model_states.pt", marker)
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt is not plain tensor data, refused"):
        verify_checkpoint(step_dir(outputs, 4), num_processes=1)
    assert not marker.exists(), "unpickling the checkpoint ran code"


# ---- 7: one live run per run directory ----------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_in_a_live_run_directory_exits_busy_naming_the_holder(tmp_path, data_dir, caplog):
    args = (f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}", "--run_name", "shared",
            "tracking.enabled=false", "checkpoint.every_steps=100000")  # fmt: skip
    first = subprocess.Popen(train_command(*args, "run.max_steps=100000"), cwd=REPO_ROOT, env=train_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    lock = tmp_path / "shared" / "run.lock"
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "shared" / "metrics.jsonl").exists():  # training, not just starting
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        second = run(train_command(*args, "run.max_steps=1"))
        assert second.returncode == ExitCode.BUSY, second.stderr[-3000:]
        line = one_error_line(second.stderr)
        assert f"is in use by another run (pid {first.pid} on host " in line
        assert json.loads(lock.read_text())["pid"] == first.pid  # the holder's lock is untouched
    finally:
        first.kill()
        first.wait()

    # SIGKILL runs no cleanup: the lock stays, stale; the next run takes it over and says so.
    assert json.loads(lock.read_text())["pid"] == first.pid
    with caplog.at_level(logging.WARNING):
        code, _ = train(data_dir, tmp_path, "--run_name", "shared", "--resume", "latest", "run.max_steps=1")
    assert code == ExitCode.OK
    assert any(f"from pid {first.pid} on host" in r.getMessage() and "has ended" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert not lock.exists(), "the lock is released when the run ends"


def test_a_lock_whose_holder_exited_is_stale_and_taken_over(tmp_path, caplog):
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(exited.stdout)
    held = RunLock(tmp_path)
    lock_text = json.dumps({"host": held.holder.host, "pid": dead_pid, "started": int(time.time())})
    (tmp_path / "run.lock").write_text(lock_text)
    with caplog.at_level(logging.WARNING), RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert any(f"pid {dead_pid}" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize(
    ("lock_job", "lock_attempt", "taken_over"),
    [("77", 0, True), ("77", 1, False), ("78", 0, False), (None, 0, False)],
    ids=["an earlier attempt of this job", "this attempt", "another job", "no job"],
)
def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_attempt_on_another_node(
    tmp_path, monkeypatch, caplog, lock_job, lock_attempt, taken_over
):
    # The killed attempt ran on a node this one cannot check: only the job id and attempt tell it is gone.
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = {"host": "node-that-died", "pid": 4242, "started": int(time.time()), "slurm_job": lock_job,
            "slurm_attempt": lock_attempt}  # fmt: skip
    (tmp_path / "run.lock").write_text(json.dumps(lock))
    if not taken_over:
        with pytest.raises(RunBusyError, match="node-that-died"):
            RunLock(tmp_path).acquire()
        return
    with caplog.at_level(logging.WARNING), RunLock(tmp_path) as held:
        assert json.loads(held.path.read_text())["slurm_attempt"] == 1
    assert any("an earlier attempt of SLURM job 77" in r.getMessage() for r in caplog.records)


# ---- 9, 10: verified checkpoints ----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated safetensors": ("model.safetensors", _truncate, "model.safetensors has"),
    "garbage optimizer state": ("optimizer.bin", _garble, "optimizer.bin does not match its SHA-256"),
    "zero-length file": ("scheduler.bin", lambda p: p.write_bytes(b""), "scheduler.bin has 0 bytes"),
    "missing RNG state": ("random_states_0.pkl", Path.unlink, "random_states_0.pkl is missing"),
    "missing trainer state": ("trainer_state.json", Path.unlink, "trainer_state.json is missing"),
    "no manifest": ("manifest.json", Path.unlink, "no manifest.json"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_verification_names_what_is_wrong_with_a_checkpoint(outputs, corruption):
    name, damage, reason = CORRUPTIONS[corruption]
    damage(step_dir(outputs, 4) / name)
    with pytest.raises(CheckpointError, match=reason):
        verify_checkpoint(step_dir(outputs, 4), num_processes=1)
    verify_checkpoint(step_dir(outputs, 2), num_processes=1)  # the older one is intact


def test_an_rng_state_the_manifest_does_not_list_is_refused(outputs):
    checkpoint = step_dir(outputs, 4)
    (checkpoint / "random_states_0.pkl").unlink()
    write_manifest(checkpoint, 4, 1)
    with pytest.raises(
        CheckpointError, match=r"no random-number state for process 0 \(random_states_0.pkl\)"
    ):
        verify_checkpoint(checkpoint, num_processes=1)


def test_a_checkpoint_of_another_world_size_is_refused(outputs):
    with pytest.raises(CheckpointError, match="saved by 1 processes but this launch has 2"):
        verify_checkpoint(step_dir(outputs, 4), num_processes=2)


def test_resume_latest_takes_the_newest_valid_checkpoint_and_says_which_it_skipped(outputs, data_dir, caplog):
    _truncate(step_dir(outputs, 4) / "model.safetensors")
    with caplog.at_level(logging.INFO):
        code, trainer = train(data_dir, outputs, "--run_name", "r", "--resume", "latest", "run.max_steps=6")
    assert code == ExitCode.OK and trainer.progress.step == 6
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith(f"skipping checkpoint {step_dir(outputs, 4)}: model.safetensors has") for m in messages
    )
    assert any(m.startswith(f"resumed from {step_dir(outputs, 2)} at step 2") for m in messages)


@pytest.mark.parametrize("corruption", ["truncated safetensors", "missing RNG state"])
def test_resuming_an_explicit_bad_checkpoint_is_one_line_exit_2(outputs, data_dir, capsys, corruption):
    name, damage, reason = CORRUPTIONS[corruption]
    damage(step_dir(outputs, 4) / name)
    code, _ = train(data_dir, outputs, "--resume", str(step_dir(outputs, 4)))
    assert code == ExitCode.BAD_INPUT
    line = one_error_line(capsys.readouterr().err)
    assert "cannot resume from this checkpoint" in line and reason in line


def test_resume_latest_refuses_when_no_checkpoint_is_valid(outputs, data_dir, capsys):
    for step in (2, 4):
        (step_dir(outputs, step) / "optimizer.bin").write_bytes(b"")
    code, _ = train(data_dir, outputs, "--run_name", "r", "--resume", "latest")
    assert code == ExitCode.BAD_INPUT
    assert "none of the 2 checkpoints" in one_error_line(capsys.readouterr().err)


class _Ends(TrainerCallback):
    def __init__(self):
        self.codes: list[int] = []

    def on_end(self, trainer, exit_code: int) -> None:
        self.codes.append(exit_code)


def test_a_checkpoint_that_does_not_fit_fails_in_one_line_and_the_callbacks_hear_failed(
    outputs, data_dir, capsys
):
    # A valid checkpoint of a smaller model: it loads nothing, and the trackers end their run FAILED.
    code, _ = train(data_dir, outputs, "--run_name", "r", "--resume", "latest", "model.d_model=48")
    assert code == ExitCode.BAD_INPUT
    assert "does not fit this run" in one_error_line(capsys.readouterr().err)
    ends = _Ends()
    cfg = load_train_config(str(TINY_CONFIG), _args(data_dir, outputs, "run.run_name=r", "run.resume=latest",
                                                    "model.d_model=48")[2:])  # fmt: skip
    with pytest.raises(CheckpointError):
        run_training(cfg, callbacks=lambda cfg: [ends])
    assert ends.codes == [ExitCode.FAILED]
    assert not (outputs / "r" / "run.lock").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [("model.depth=2", r"missing from the checkpoint: encoder\S*\.1\.\S+, "),
     ("model.head_hidden=48", r"\S+weight is \(32, \d+\) in the checkpoint but \(48, \d+\) in the model")],
)  # fmt: skip
def test_a_checkpoint_of_another_architecture_names_the_keys_and_shapes_that_differ(
    outputs, data_dir, capsys, override, named
):
    code, _ = train(data_dir, outputs, "--run_name", "r", "--resume", "latest", override)
    assert code == ExitCode.BAD_INPUT
    line = one_error_line(capsys.readouterr().err)
    assert "holds another architecture" in line and re.search(named, line), line


# ---- 11: torn metrics.jsonl -------------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train"}\n{"step": 2, "split": "train"}\n{"step": 3, "spl')
    log = MetricsLog(path)
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in log.read()] == [1, 2]
    assert any("dropped an incomplete last line" in r.getMessage() for r in caplog.records)
    assert log.truncate(5) == 0  # resume: the torn tail goes, so the next append starts a line
    log.append({"step": 3, "split": "train"})
    assert [r["step"] for r in log.read()] == [1, 2, 3]


def test_a_bad_metrics_line_that_is_not_the_last_names_its_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(MetricsLogError, match=r"metrics.jsonl line 2 is not a JSON record"):
        MetricsLog(path).read()


# ---- 12: --resume latest with nothing to resume --------------------------------------------------------


def test_resume_latest_without_a_checkpoint_says_it_starts_fresh(tmp_path, data_dir, caplog):
    with caplog.at_level(logging.WARNING):
        code, trainer = train(
            data_dir, tmp_path, "--run_name", "new", "--resume", "latest", "run.max_steps=1"
        )
    assert code == ExitCode.OK and trainer.progress.step == 1
    assert any(r.getMessage() == f"--resume latest: {tmp_path / 'new'} has no checkpoint; starting a fresh run there"
               for r in caplog.records)  # fmt: skip


# ---- 14: validation before side effects --------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    ["checkpoint.every_steps=0", "checkpoint.keep_last=0", "run.log_every_steps=0", "optim.grad_accum_steps=0",
     "run.num_epochs=0", "run.max_steps=-1", "data.batch_size=0", "data.eval_batch_size=-8"],
)  # fmt: skip
def test_a_counter_below_one_is_refused_at_config_load_and_nothing_is_created(
    tmp_path, data_dir, capsys, override
):
    output_dir = tmp_path / "out"
    code, _ = train(data_dir, output_dir, override)
    assert code == ExitCode.BAD_INPUT
    key = override.split("=")[0]
    assert f"{key} must be at least" in one_error_line(capsys.readouterr().err)
    assert not output_dir.exists()  # no run directory, no MLflow store


def test_an_unwritable_output_dir_is_one_line_exit_2(tmp_path, data_dir, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _ = train(data_dir, blocker / "out", "run.max_steps=1")
    assert code == ExitCode.BAD_INPUT
    assert f"run.output_dir {blocker / 'out'} is not writable" in one_error_line(capsys.readouterr().err)


# ---- 18: SIGTERM at the next step ------------------------------------------------------------------------


class _SignalAtStep(TrainerCallback):
    """Sends this process SIGTERM when metrics are logged at `step` (a step that is no sync point)."""

    def __init__(self, step: int):
        self.step = step

    def on_metrics(self, trainer, metrics: dict[str, float], step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_is_acted_on_at_the_next_step(tmp_path, data_dir, restore_signal_handlers):
    cfg = load_train_config(str(TINY_CONFIG), _args(data_dir, tmp_path, "run.run_name=stop", "run.max_steps=40",
                                                    "run.log_every_steps=7", "checkpoint.every_steps=1000")[2:])  # fmt: skip
    code, trainer = run_training(cfg, callbacks=lambda cfg: [_SignalAtStep(7)])
    assert code == ExitCode.PREEMPTED
    assert trainer.progress.step == 8
    assert [p.name for p in (tmp_path / "stop" / "checkpoints").iterdir()] == ["step_00000008"]


def test_checkpoints_never_hold_weights_after_a_nan_loss(tmp_path, data_dir, capsys):
    code, _ = train(data_dir, tmp_path, "--run_name", "nan", "optim.lr=1e12", "optim.grad_clip=0",
                    "schedule.warmup_steps=0", "run.max_steps=30", "checkpoint.every_steps=3")  # fmt: skip
    assert code == ExitCode.NONFINITE
    assert "loss became NaN/Inf at step" in one_error_line(capsys.readouterr().err)
    for checkpoint in (tmp_path / "nan" / "checkpoints").glob("step_*"):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), f"{checkpoint.name} holds NaN/Inf"


def test_every_test_docs_reliability_md_names_exists():
    """The promise table cites tests as `test_name` (any tests/*.py) or `tests/<file>.py::test_name`."""
    text = (REPO_ROOT / "docs" / "reliability.md").read_text()
    cited = re.findall(r"`(?:(tests/[\w/]+\.py)::)?(test_\w+)(?:\[[^\]`]*\])?`", text)
    assert len(cited) > 20
    sources = {p: p.read_text() for p in (REPO_ROOT / "tests").rglob("test_*.py")}
    missing = [
        f"{file}::{name}" if file else name
        for file, name in cited
        if not any(
            f"def {name}(" in source
            for path, source in sources.items()
            if not file or path == REPO_ROOT / file
        )
    ]
    assert not missing, missing


# ---- resume on other data, symlinks in the run directory, permissions for teammates ------------------


@pytest.mark.parametrize("change", ["other data", "other batch size"])
def test_a_resume_on_other_data_or_batches_is_refused_unless_deliberate(
    outputs, data_dir, tmp_path_factory, capsys, caplog, change
):
    if change == "other data":
        other = prepared_synthetic(tmp_path_factory.mktemp("other_data"), rows=300, seed=6)
        changed = (f"data.data_dir={other}",)
    else:
        changed = ("data.batch_size=4",)
    resume = ("--run_name", "r", "--resume", "latest", "run.max_steps=6", *changed)
    code, _ = train(data_dir, outputs, *resume)
    assert code == ExitCode.BAD_INPUT
    assert "trained on other data or batches" in one_error_line(capsys.readouterr().err)

    with caplog.at_level(logging.WARNING):
        code, trainer = train(data_dir, outputs, *resume, "checkpoint.resume_changed_data=true")
    assert code == ExitCode.OK and trainer.progress.step == 6
    assert any("resuming on changed data or batches" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("link", ["run directory", "checkpoints", "a checkpoint", "best"])
def test_a_symlink_planted_in_the_run_directory_is_refused_and_nothing_is_written_or_deleted_through_it(
    outputs, data_dir, tmp_path, capsys, link
):
    elsewhere = tmp_path / "elsewhere"
    run_dir = outputs / "r"
    planted = {"run directory": run_dir, "checkpoints": run_dir / "checkpoints",
               "a checkpoint": step_dir(outputs, 2), "best": run_dir / "best"}[link]  # fmt: skip
    shutil.move(planted, elsewhere)
    planted.symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))

    code, _ = train(data_dir, outputs, "--run_name", "r", "--resume", "latest", "run.max_steps=8",
                    "checkpoint.every_steps=2", "checkpoint.keep_last=1")  # fmt: skip
    assert code == ExitCode.BAD_INPUT
    assert "is a symbolic link" in one_error_line(capsys.readouterr().err)
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before


def test_exports_checkpoints_and_reports_follow_the_umask(tmp_path, data_dir):
    previous = os.umask(0o027)  # a group that may read, others not
    try:
        code, _ = train(
            data_dir, tmp_path, "--run_name", "shared", "run.max_steps=2", "checkpoint.every_steps=2"
        )
    finally:
        os.umask(previous)
    assert code == ExitCode.OK
    run_dir = tmp_path / "shared"
    modes = {p.relative_to(run_dir).as_posix(): p.stat().st_mode & 0o777 for p in run_dir.rglob("*")}
    assert {
        path for path, mode in modes.items() if mode & 0o050 != 0o040 and (run_dir / path).is_file()
    } == set()
    wrong_dirs = {
        path: oct(mode) for path, mode in modes.items() if (run_dir / path).is_dir() and mode != 0o750
    }
    assert wrong_dirs == {}
    assert {"best", "final", "checkpoints/step_00000002", "reports"} <= set(modes)
