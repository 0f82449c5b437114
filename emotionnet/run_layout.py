"""What a run directory holds, named once: every module that reads or writes a run uses these paths.

<output_dir>/<run_name>/
    config.yaml          resolved configuration (secrets redacted)
    metrics.jsonl        every logged metric, one JSON object per line
    checkpoints/step_XXXXXXXX/   full training state (resume)
    best/  final/        model exports (safetensors + emotionnet.json)
    snapshots/cycle_K/   end-of-cycle exports (snapshot ensemble)
    reports/             confusion matrices, per-class reports, training curves
    environment.jsonl    one line per start or resume: hosts, device, world size, precision, versions
    mlflow_run.json      which MLflow run mirrors this directory (when tracked)
    run.lock             held by the live run using this directory (pid, host)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
BEST = "best"
FINAL = "final"
SNAPSHOTS = "snapshots"
REPORTS = "reports"
MLFLOW_RECORD = "mlflow_run.json"
ENVIRONMENT = "environment.jsonl"
LOCK = "run.lock"
EXPORTS = (BEST, FINAL)  # the exports a run directory offers, preferred first
# A run name is one path component of safe characters: a run never lands outside its output directory.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot name a run directory, or None."""
    if RUN_NAME.fullmatch(name):
        return None
    return (
        f"{name!r} is not a run name: use one path component of up to 128 letters, digits, '.', '_' or '-', "
        "not starting with '.' or '-'"
    )


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.root / BEST

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def snapshots(self) -> Path:
        return self.root / SNAPSHOTS

    @property
    def reports(self) -> Path:
        return self.root / REPORTS

    @property
    def mlflow_record(self) -> Path:
        return self.root / MLFLOW_RECORD

    @property
    def environment(self) -> Path:
        return self.root / ENVIRONMENT

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    def snapshot(self, cycle: int) -> Path:
        return self.snapshots / f"cycle_{cycle}"

    def snapshot_dirs(self) -> list[Path]:
        """The kept end-of-cycle exports, in cycle order."""
        found = (d for d in self.snapshots.glob("cycle_*") if d.is_dir())
        return sorted(found, key=lambda d: int(d.name.removeprefix("cycle_")))
