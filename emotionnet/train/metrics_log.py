"""`metrics.jsonl`: the run's own metric record, written whatever else is tracking the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from data_prep.files import write_atomic
from emotionnet.errors import UserError

log = logging.getLogger(__name__)


class MetricsLogError(UserError):
    """A line of metrics.jsonl, other than a torn last one, that is not a JSON record."""


class MetricsLog:
    """One JSON object per line: {"step": int, "epoch": int, "split": "train"|"validation"|"test", ...}.

    Lines are flushed as they are written, so a killed run keeps everything logged before the kill; a kill
    in the middle of a write leaves a torn last line, which `read` drops with a warning.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = -1  # records in the file, known once `truncate` has read it

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.count >= 0:
            self.count += 1

    def read(self) -> list[dict]:
        return self._read()[0]

    def _read(self) -> tuple[list[dict], bool]:
        """The records, and whether a torn last line was dropped."""
        if not self.path.exists():
            return [], False
        text = self.path.read_text(errors="replace")
        lines = text.split("\n")
        # A complete file ends with "\n", so its last piece is empty; anything else there was cut short.
        torn = lines.pop()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number == len(lines) and not torn:  # the last line may be torn before its newline too
                    torn = line
                    break
                raise MetricsLogError(f"{self.path} line {number} is not a JSON record ({err.msg})") from err
        if torn.strip():
            log.warning(
                "%s: dropped an incomplete last line (%d characters), left by a run killed while writing it",
                self.path,
                len(torn),
            )
        return records, bool(torn.strip())

    def truncate(self, step: int, records: int = -1) -> int:
        """Back to a checkpoint: keep its first `records` records (when known, -1 otherwise: those up to
        `step`), dropping work a resumed run will redo and a torn last line; returns how many were dropped.
        By count, because an end of run logs validation and test records at the checkpoint's own step."""
        kept, torn = self._read()
        total = len(kept)
        kept = kept[:records] if records >= 0 else [r for r in kept if r["step"] <= step]
        if torn or len(kept) != total:
            write_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        self.count = len(kept)
        return total - len(kept)
