"""The user's mistakes and bugs part ways: a `UserError` is one line and its exit code; anything else keeps
its traceback, exits 1, and ends the tracked MLflow run FAILED with the traceback's last line as a tag.

Real Accelerate, `datasets` shards and MLflow (a SQLite store under tmp); the tiny model of
tests/configs/tiny.yaml.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from data_prep.manifest import DamagedDatasetError
from data_prep.records import PrepError
from emotionnet.cli.train import main as train_main
from emotionnet.config.loader import ConfigError
from emotionnet.data.loaders import DatasetNotPreparedError
from emotionnet.data.source import DataSourceError
from emotionnet.errors import UserError
from emotionnet.evaluation.evaluate import EvalInputError
from emotionnet.exit_codes import MEANINGS, ExitCode, exit_codes_help
from emotionnet.inference.ensemble import ModelLoadError
from emotionnet.inference.export import ExportError
from emotionnet.inference.onnx_export import OnnxError
from emotionnet.inference.predict import PredictInputError
from emotionnet.model.backbone import PretrainedWeightsError
from emotionnet.tracking.mlflow_tracker import ERROR_TAG, RunRecord, TrackingError
from emotionnet.tracking.replay import ReplayError
from emotionnet.train.checkpoint import CheckpointError
from emotionnet.train.control import NonFiniteLossError
from emotionnet.train.metrics_log import MetricsLogError
from emotionnet.train.run_dir import RunDirError
from emotionnet.train.run_lock import RunBusyError
from launcher.accelerate_cmd import LaunchError
from tests.training_utils import REPO_ROOT, TINY_CONFIG, prepared_synthetic, train_env

PROG = "emotionnet-train"
COMMANDS = ("eval", "export", "launch", "mlflow_ui", "predict", "prep", "replay", "summary", "synth", "train")
# A ValueError: before UserError, the command took any ValueError for bad input (one line, exit 2).
INJECTED = "ValueError: injected bug in the loss at training step 3"
# `emotionnet-train` exactly as its console script runs it (`sys.exit(main())`), with a bug planted in the
# training step: the third call of the loss raises.
BUGGY_TRAIN = f"""
import runpy, sys
from emotionnet.train.loss import Criterion

original, calls = Criterion.__call__, []

def buggy(self, logits, targets):
    calls.append(1)
    if len(calls) == 3:
        raise ValueError({INJECTED.partition(": ")[2]!r})
    return original(self, logits, targets)

Criterion.__call__ = buggy
sys.argv[0] = "emotionnet-train"
runpy.run_module("emotionnet.cli.train", run_name="__main__")
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_synthetic(tmp_path_factory.mktemp("errors_data"), rows=200, seed=7)


def train_args(data_dir: Path, output_dir: Path, *overrides: str) -> list[str]:
    return ["--config", str(TINY_CONFIG), f"data.data_dir={data_dir}", f"run.output_dir={output_dir}",
            *overrides]  # fmt: skip


def test_a_bug_deep_in_training_exits_1_with_its_traceback_and_the_mlflow_run_ends_failed(data_dir, tmp_path):
    args = train_args(
        data_dir, tmp_path, "--run_name", "buggy", "run.max_steps=10", "tracking.system_metrics=false"
    )
    env = {k: v for k, v in train_env().items() if k != "MLFLOW_TRACKING_URI"}  # the store under tmp_path
    result = subprocess.run([sys.executable, "-c", BUGGY_TRAIN, *args], capture_output=True, text=True,
                            timeout=600, cwd=REPO_ROOT, env=env)  # fmt: skip

    assert result.returncode == ExitCode.FAILED, result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == INJECTED
    assert f"{PROG}: error:" not in result.stderr  # not reported as the user's mistake
    record = RunRecord.read(tmp_path / "buggy")
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(record.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR_TAG] == INJECTED


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("data.csv_file=<missing>",), "no CSV at"),  # data
        (("model.heads=3",), "model.heads (3) must divide model.d_model (32)"),  # at load, not model build
        (("optim.ema_decay=1.0",), "optim.ema_decay must be in [0, 1)"),
    ],
    ids=["missing data", "heads that do not divide d_model", "EMA decay of 1"],
)
def test_a_user_error_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys, overrides, message):
    output_dir = tmp_path / "out"
    overrides = tuple(o.replace("<missing>", str(tmp_path / "missing.csv")) for o in overrides)
    code = train_main(train_args(tmp_path / "no_data", output_dir, "tracking.enabled=false", *overrides))
    assert code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith(f"{PROG}:")]
    assert line.startswith(f"{PROG}: error: ") and message in line
    assert not output_dir.exists()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError, ExitCode.BAD_INPUT),
        (PrepError, ExitCode.BAD_INPUT),
        (DataSourceError, ExitCode.BAD_INPUT),
        (DatasetNotPreparedError, ExitCode.BAD_INPUT),
        (DamagedDatasetError, ExitCode.BAD_INPUT),
        (PretrainedWeightsError, ExitCode.BAD_INPUT),
        (ExportError, ExitCode.BAD_INPUT),
        (ModelLoadError, ExitCode.BAD_INPUT),
        (OnnxError, ExitCode.BAD_INPUT),
        (PredictInputError, ExitCode.BAD_INPUT),
        (EvalInputError, ExitCode.BAD_INPUT),
        (RunDirError, ExitCode.BAD_INPUT),
        (MetricsLogError, ExitCode.BAD_INPUT),
        (TrackingError, ExitCode.BAD_INPUT),
        (ReplayError, ExitCode.BAD_INPUT),
        (LaunchError, ExitCode.BAD_INPUT),
        (RunBusyError, ExitCode.BUSY),
        (CheckpointError, ExitCode.BAD_INPUT),
        (NonFiniteLossError, ExitCode.NONFINITE),
    ],
)
def test_every_mistake_a_user_can_make_is_a_user_error_with_its_exit_code(error, code):
    assert issubclass(error, UserError) and not issubclass(error, ValueError | RuntimeError)
    assert error.exit_code == code


def test_every_user_error_exit_code_is_in_the_table_and_is_neither_success_nor_a_bug():
    for command in COMMANDS:
        importlib.import_module(f"emotionnet.cli.{command}")  # every error class any command can meet
    pending, seen = [UserError], set()
    while pending:
        cls = pending.pop()
        seen.add(cls)
        pending += cls.__subclasses__()
    assert len(seen) > 10
    for cls in seen:
        assert cls.exit_code in MEANINGS and cls.exit_code not in (ExitCode.OK, ExitCode.FAILED), cls


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_the_exit_code_table_in_its_help(command, capsys):
    main = importlib.import_module(f"emotionnet.cli.{command}").main
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert exit_codes_help() in capsys.readouterr().out


def test_the_launcher_help_of_slurm_prints_the_exit_code_table_too(capsys):
    from emotionnet.cli.launch import main

    with pytest.raises(SystemExit) as exited:
        main(["slurm", "--help"])
    assert exited.value.code == 0
    assert exit_codes_help() in capsys.readouterr().out
