"""`metrics.jsonl`: the run's own metric record, written whatever else is tracking the run."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """One JSON object per line: {"step": int, "epoch": int, "split": "train"|"validation"|"test", ...}.

    Lines are flushed as they are written, so a killed run keeps everything logged before the kill.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> int:
        """Drop records logged after `step` (work a resumed run will redo); returns how many were dropped."""
        records = self.read()
        kept = [r for r in records if r["step"] <= step]
        if len(kept) != len(records):
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            os.replace(tmp, self.path)
        return len(records) - len(kept)
