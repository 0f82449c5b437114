"""Four processes hold one model: after 20 steps (per-device batch 8, SyncBatchNorm by default) every rank has
bit-identical parameters and buffers, and the exported model is that model, under DDP, ZeRO-2 and ZeRO-3.

Through real `accelerate launch` on the CPU (gloo); tests/scripts/train_and_dump.py writes each rank's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emotionnet.config.schema import TrainConfig
from emotionnet.model.emotionnet import ModelConfig, create_model
from emotionnet.train.replicas import SyncBatchNorm, convert_sync_batchnorm, use_sync_batchnorm
from tests.training_utils import ZERO3_PARTITION_ALL, accelerate_command, prepared_synthetic, run

WORLD = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    # 800 rows -> 640 training rows: one epoch is 20 steps of 4 x 8.
    return prepared_synthetic(tmp_path_factory.mktemp("replica_data"), rows=800, seed=9)


def test_sync_batchnorm_setting():
    assert [use_sync_batchnorm("auto", n) for n in (1, 4)] == [False, True]
    assert [use_sync_batchnorm(s, 4) for s in (True, False)] == [True, False]
    with pytest.raises(ValueError, match="sync_batchnorm"):
        ModelConfig(sync_batchnorm="always")
    assert TrainConfig().model.sync_batchnorm == "auto"


def test_converted_model_keeps_its_state_and_alone_computes_as_batchnorm():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone_stages=3, d_model=32, depth=1, heads=2, spatial_heads=2, head_hidden=32)
    plain = create_model(cfg)
    plain.backbone.features[1][0].block[0][1].running_mean.uniform_()  # a non-trivial buffer
    synced = convert_sync_batchnorm(create_model(cfg))
    synced.load_state_dict(plain.state_dict())
    assert any(isinstance(m, SyncBatchNorm) for m in synced.modules())
    assert plain.state_dict().keys() == synced.state_dict().keys()
    x = torch.randn(8, 1, 48, 48)
    for mode in (True, False):
        outputs = []
        for model in (plain, synced):
            model.train(mode)
            torch.manual_seed(1)  # the same dropout draws
            outputs.append(model(x))
        torch.testing.assert_close(*outputs)
    torch.testing.assert_close(synced.state_dict(), plain.state_dict())


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("launch", "label"),
    [("cpu_multiprocess.yaml", "ddp"),
     pytest.param("deepspeed_zero2.yaml", "deepspeed-zero2", marks=pytest.mark.deepspeed),
     pytest.param(ZERO3_PARTITION_ALL, "deepspeed-zero3", marks=pytest.mark.deepspeed)],
    ids=["ddp", "zero2", "zero3"],
)  # fmt: skip
def test_four_ranks_hold_one_model_and_export_it(tmp_path, data_dir, launch, label):
    result = run(accelerate_command(launch, WORLD, f"data.data_dir={data_dir}", f"run.output_dir={tmp_path}",
                                    "--run_name", "r", "run.max_steps=20", "run.num_epochs=1",
                                    "run.log_every_steps=10", "run.mixed_precision=no", "tracking.enabled=false"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "r"
    facts = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [(f["world_size"], f["distributed"], f["sync_batchnorm"]) for f in facts] == [
        (WORLD, label, True)
    ] * WORLD

    states = [torch.load(run_dir / f"params_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert any(k.endswith("running_var") for k in states[0])
    for rank in range(1, WORLD):
        assert states[rank].keys() == states[0].keys()
        differ = [k for k in states[0] if not torch.equal(states[rank][k], states[0][k])]
        assert not differ, f"rank {rank} differs from rank 0 in {differ[:5]}"

    exported = load_file(run_dir / "final" / "model.safetensors")
    assert exported.keys() == states[0].keys()
    differ = [k for k in exported if not torch.equal(exported[k], states[0][k].to(exported[k].dtype))]
    assert not differ, f"the export differs from the ranks' model in {differ[:5]}"
