"""What a checkpoint was trained on: the data (its prep fingerprint and split sizes) and the batch layout.

Saved with every checkpoint (`trainer_state.json`). A resume is bitwise only on the same rows in the same
batches, and a resume on other data would silently mix two trainings: so a checkpoint whose data or batch
layout differs from this run's is refused, unless `checkpoint.resume_changed_data` makes it deliberate
(then one warning line says what changed).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from data_prep.schema import MANIFEST_NAME
from emotionnet.config.schema import TrainConfig

log = logging.getLogger(__name__)


def data_fingerprint(data_dir: Path) -> str | None:
    """The prepared dataset's fingerprint (its source's SHA-256, schema and prep version, sharding)."""
    try:
        return json.loads((Path(data_dir) / MANIFEST_NAME).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def run_identity(cfg: TrainConfig, splits: dict) -> RunIdentity:
    facts = {
        "data_fingerprint": data_fingerprint(Path(cfg.data.data_dir)),
        "split_rows": {name: len(split) for name, split in sorted(splits.items())},
        "batch_size": cfg.data.batch_size,
        "grad_accum_steps": cfg.optim.grad_accum_steps,
    }
    return RunIdentity(facts, cfg.checkpoint.resume_changed_data)


class RunIdentity:
    """The facts a resume must share with its checkpoint; `load_state_dict` compares instead of restoring."""

    def __init__(self, facts: dict, allow_change: bool):
        self.facts = facts
        self.allow_change = allow_change

    def state_dict(self) -> dict:
        return dict(self.facts)

    def load_state_dict(self, saved: dict) -> None:
        changes = [
            f"{key} {saved.get(key)!r} -> {now!r}" for key, now in self.facts.items() if saved.get(key) != now
        ]
        if not changes:
            return
        if not self.allow_change:
            raise ValueError(
                f"it was trained on other data or batches ({'; '.join(changes)}): start a new run, or pass "
                "checkpoint.resume_changed_data=true to continue it on these on purpose"
            )
        log.warning("resuming on changed data or batches, as checkpoint.resume_changed_data=true asks: %s",
                    "; ".join(changes))  # fmt: skip
