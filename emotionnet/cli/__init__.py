"""Thin command-line entry points: parse, call one function, map errors to exit codes (exit_codes.py).

A command catches `UserError` (emotionnet/errors.py) only and reports it with `report_user_error`: one
line, `prog: error: message`, and the error's exit code. Anything else is a bug or an environment fault:
it keeps its traceback and the interpreter exits 1 (ExitCode.FAILED).
"""

from __future__ import annotations

import argparse
import sys

from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode
from emotionnet.inference.ensemble import RUNTIMES
from emotionnet.tracking.redact import redact_text


def report_user_error(prog: str, err: UserError) -> ExitCode:
    """Print `err` as `prog: error: message` on stderr (credentials removed: MLflow errors carry URLs);
    returns its exit code."""
    print(f"{prog}: error: {redact_text(str(err))}", file=sys.stderr)
    return err.exit_code


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs a model: --device, --runtime and --no-progress."""
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="torch, or onnx: MODEL/model.onnx (written by emotionnet-export) run by ONNX Runtime on the CPU",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
