"""Checks for every value the launcher writes into a batch script or a command line.

A value reaches bash (the sbatch settings block), sbatch's own `#SBATCH` parser, or accelerate's command
line: one control character (a newline above all) would start a line of its own there, so none gets
through. Each check returns the problem as a phrase, or None; `argtype` turns one into an argparse
`type=` so that a bad option is refused while parsing, before anything is written or submitted.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from emotionnet.run_layout import RUN_NAME

# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Job, partition and account names: one token that is also a safe file name (the job name names the log
# file and, by default, the run directory).
_NAME = RUN_NAME  # job, run and account names follow the run-directory rule
_PARTITIONS = re.compile(rf"{_NAME.pattern}(,{_NAME.pattern})*")
# sbatch splits an #SBATCH line on whitespace and reads quotes and backslashes; --output expands `%`.
_DIRECTIVE_UNSAFE = re.compile(r"[\s\"'\\%]")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_HOST = re.compile(r"[A-Za-z0-9._:\[\]-]{1,253}")
# SLURM's --time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_TIME = re.compile(r"(?:([0-9]{1,5})-)?([0-9]{1,7}(?::[0-9]{1,2}){0,2})")
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
MAX_PORT = 65535


def control_problem(value: str | Path) -> str | None:
    text = str(value)
    if match := _CONTROL.search(text):
        return f"{text!r} contains the control character {match.group()!r}"
    return None


def name_problem(text: str) -> str | None:
    if _NAME.fullmatch(text):
        return None
    return control_problem(text) or (
        f"{text!r} is not a name of up to 128 letters, digits, '.', '_' or '-' (not starting with '.' or '-')"
    )


def partition_problem(text: str) -> str | None:
    if _PARTITIONS.fullmatch(text):
        return None
    return control_problem(text) or f"{text!r} is not a partition name or a comma-separated list of them"


def directive_path_problem(path: Path | str) -> str | None:
    """A path that goes into an #SBATCH line as it is (`--chdir`, `--output`)."""
    text = str(path)
    if match := _DIRECTIVE_UNSAFE.search(text):
        what = "whitespace" if match.group().isspace() else repr(match.group())
        return control_problem(text) or f"{text!r} contains {what}, which an #SBATCH line cannot hold"
    return None


def module_problem(text: str) -> str | None:
    if _MODULE.fullmatch(text):
        return None
    return control_problem(text) or f"{text!r} is not a Python module name"


def host_problem(text: str) -> str | None:
    if _HOST.fullmatch(text):
        return None
    return control_problem(text) or f"{text!r} is not a host name or IP address"


def time_seconds(text: str) -> int:
    """A SLURM time limit in seconds; ValueError naming the accepted formats for anything else."""
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(control_problem(text) or f"{text!r} is not a SLURM time limit ({TIME_FORMATS})")
    days, fields = match.group(1), [int(field) for field in match.group(2).split(":")]
    if days is not None:  # D-HH[:MM[:SS]]
        units, limits = (3600, 60, 1), (24, 60, 60)
    else:  # minutes, MM:SS or HH:MM:SS: the leading field is unbounded
        units, limits = ((60,), (60, 1), (3600, 60, 1))[len(fields) - 1], (None, 60, 60)
    units, limits = units[: len(fields)], limits[: len(fields)]
    if any(limit is not None and field >= limit for field, limit in zip(fields, limits, strict=True)):
        raise ValueError(f"{text!r} has a field out of range (minutes, seconds < 60; hours < 24 after days)")
    seconds = int(days or 0) * 86400 + sum(field * unit for field, unit in zip(fields, units, strict=True))
    if seconds == 0:
        raise ValueError(f"{text!r} is no time at all (SLURM reads a zero limit as no limit)")
    return seconds


def time_problem(text: str) -> str | None:
    try:
        time_seconds(text)
    except ValueError as err:
        return str(err)
    return None


def count_problem(value: int) -> str | None:
    return None if value >= 1 else f"{value} is not a positive count"


def port_problem(value: int) -> str | None:
    return None if 1 <= value <= MAX_PORT else f"{value} is not a port in 1..{MAX_PORT}"


def argtype(problem: Callable, convert: Callable = str) -> Callable[[str], object]:
    """An argparse `type=`: convert the text, then refuse it with `problem`'s phrase if it has one."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if reason := problem(value):
            raise argparse.ArgumentTypeError(reason)
        return value

    return parse
