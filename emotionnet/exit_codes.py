"""The exit codes of every `emotionnet-*` command: one table, the same meaning everywhere."""

from __future__ import annotations

import argparse
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # an unexpected failure (a bug or an environment fault): the traceback says where
    BAD_INPUT = 2  # a UserError (emotionnet/errors.py): bad arguments, configuration, data, files; one line
    NONFINITE = 3  # training stopped because the loss became NaN/Inf
    BUSY = 4  # the run directory is in use by another live run
    PREEMPTED = 75  # sysexits EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after a checkpoint; resume later
    INTERRUPTED = 130  # Ctrl-C


MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "unexpected failure (see the traceback)",
    ExitCode.BAD_INPUT: "bad arguments, configuration, data, model file, run directory or tracking store "
    "(one line says which)",
    ExitCode.NONFINITE: "training stopped: the loss became NaN/Inf",
    ExitCode.BUSY: "the run directory is in use by another run",
    ExitCode.PREEMPTED: "stopped by SIGTERM/SIGUSR1 after saving a checkpoint: resume with --resume latest",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_codes_help() -> str:
    """The table as a `--help` epilog."""
    rows = "\n".join(f"  {int(code):>3}  {text}" for code, text in MEANINGS.items())
    return f"exit codes:\n{rows}"


def command_parser(prog: str, description: str | None, notes: str = "", **kwargs) -> argparse.ArgumentParser:
    """An `emotionnet-*` command's parser: its description as written, then `notes` and the exit codes."""
    epilog = f"{notes}\n{exit_codes_help()}" if notes else exit_codes_help()
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
