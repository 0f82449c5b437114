"""The CPU test of tests/test_host_syncs.py on a GPU: the same steps under
`torch.cuda.set_sync_debug_mode("error")`, so that any synchronisation between sync points raises."""

from __future__ import annotations

import pytest

from tests.gpu.gpu_utils import GPU
from tests.host_sync import fit_watched, tiny_trainer

pytestmark = GPU


@pytest.mark.parametrize("overrides", [(), ("optim.ema_decay=0.99",)], ids=["plain", "ema"])
def test_no_device_sync_between_sync_points(tmp_path, gpu_data, overrides):
    trainer = tiny_trainer(gpu_data, tmp_path / "out", *overrides)
    assert trainer.accelerator.device.type == "cuda"
    hits = fit_watched(trainer, cuda_errors=True)  # a sync raises inside fit
    assert trainer.progress.step == 40
    assert not hits, dict(hits)
