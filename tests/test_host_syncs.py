"""Between sync points the training step never waits on the device: no `.item()`, no tensor built from a
Python number, no blocking copy (the GPU twin: tests/gpu/test_host_syncs.py)."""

from __future__ import annotations

import pytest

from tests.host_sync import fit_watched, tiny_trainer
from tests.training_utils import prepared_synthetic


@pytest.mark.parametrize(
    "overrides",
    [(), ("optim.ema_decay=0.99",), ("run.time_budget_min=5",)],
    ids=["plain", "ema", "time-budget"],
)
def test_no_host_reads_between_sync_points(tmp_path, overrides):
    data = prepared_synthetic(tmp_path / "data", rows=300, seed=2)
    trainer = tiny_trainer(data, tmp_path / "out", *overrides)
    hits = fit_watched(trainer)
    assert trainer.progress.step == 40
    assert not hits, dict(hits)
