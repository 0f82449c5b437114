"""Snapshot ensembles, weight EMA and batch mixing: the schedule maths, the averaging, a real run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from data_prep.schema import CLASS_NAMES
from emotionnet.cli.eval import main as eval_main
from emotionnet.cli.train import run as train_run
from emotionnet.config.schema import ScheduleConfig
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import AugmentConfig, build_batch_mixing
from emotionnet.inference.ensemble import Ensemble, LoadedModel
from emotionnet.train.ema import WeightEMA
from emotionnet.train.optim import cycle_end_steps
from tests.training_utils import REPO_ROOT, prepared_synthetic, read_jsonl


def test_cycle_ends_follow_warmup_and_cycle_multiplier():
    schedule = ScheduleConfig(warmup_steps=10, cycle_epochs=1, cycle_mult=1)
    assert cycle_end_steps(schedule, steps_per_epoch=20, total_steps=75) == [30, 50, 70]
    schedule.cycle_mult = 2
    assert cycle_end_steps(schedule, steps_per_epoch=20, total_steps=75) == [30, 70]
    schedule.cycle_epochs = 5
    assert cycle_end_steps(schedule, steps_per_epoch=20, total_steps=75) == []


def test_weight_ema_ramps_its_decay_and_copies_counters():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    expected = None
    for call in range(1, 30):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        ema.update()
        current = model[0].weight.detach().clone()
        if expected is None:  # the first update copies the model
            expected = current
        else:
            decay = min(0.9, call / (9 + call))  # (1 + n) / (10 + n) with n = call - 1 updates so far
            expected = decay * expected + (1 - decay) * current
    assert torch.allclose(ema.module[0].weight, expected, atol=1e-5)
    assert not torch.allclose(ema.module[0].weight, model[0].weight)
    assert int(ema.module[1].num_batches_tracked) == 29


def test_weight_ema_rejects_a_decay_outside_the_unit_interval():
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(nn.Linear(2, 2), decay=1.0)


def test_an_ensemble_averages_its_members_probabilities():
    torch.manual_seed(0)
    preprocessing = Preprocessing(input_size=48)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 7)).eval() for _ in range(3)]
    members = [LoadedModel(m, preprocessing, CLASS_NAMES, f"member {i}") for i, m in enumerate(models)]
    faces = torch.randint(0, 256, (4, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        mean = torch.stack([m(preprocessing(faces)).softmax(-1) for m in models]).mean(0)
    assert torch.allclose(Ensemble(members).predict_proba(faces), mean, atol=1e-6)


def test_batch_mixing_gives_soft_targets_that_sum_to_one():
    mixing = build_batch_mixing(AugmentConfig(mixup_alpha=0.4, cutmix_alpha=1.0), num_classes=7)
    images, labels = torch.randn(8, 1, 48, 48), torch.arange(8) % 7
    mixed, targets = mixing(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 7)
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    assert build_batch_mixing(AugmentConfig(), num_classes=7) is None


def test_snapshot_ensemble_with_ema_and_mixing_in_a_real_run(tmp_path, capsys):
    data = prepared_synthetic(tmp_path / "data", rows=400, seed=3)
    code, trainer = train_run([
        "--config", str(REPO_ROOT / "tests/configs/tiny.yaml"), f"data.data_dir={data}",
        f"run.output_dir={tmp_path / 'out'}", "--run_name", "snap", "run.num_epochs=2", "schedule.name=restarts",
        "schedule.warmup_steps=0", "schedule.cycle_epochs=1", "schedule.snapshot_ensemble=true",
        "optim.ema_decay=0.9", "augment.mixup_alpha=0.2", "augment.cutmix_alpha=0.2",
        "tracking.enabled=false",
    ])  # fmt: skip
    assert code == 0
    run_dir = tmp_path / "out" / "snap"
    per_epoch = trainer.parts.steps_per_epoch
    snapshots = trainer.layout.snapshot_dirs()
    assert [d.name for d in snapshots] == ["cycle_1", "cycle_2"]
    steps = [json.loads((d / "emotionnet.json").read_text())["metadata"]["step"] for d in snapshots]
    assert steps == [per_epoch, 2 * per_epoch]

    # Exports hold the EMA weights, not the optimizer's.
    final = load_file(run_dir / "final" / "model.safetensors")
    ema_state = trainer.parts.ema.module.state_dict()
    raw_state = trainer.accelerator.unwrap_model(trainer.parts.model).state_dict()
    name = "head.net.4.weight"
    assert torch.equal(final[name], ema_state[name]) and not torch.equal(final[name], raw_state[name])

    records = read_jsonl(run_dir / "metrics.jsonl")
    logged = next(r for r in records if r["split"] == "snapshots_validation")
    assert logged["snapshots_validation/n"] == 40
    # emotionnet-eval on the same snapshots, as an ensemble, reproduces the logged accuracy.
    capsys.readouterr()
    args = [*map(str, snapshots), str(data), "--split", "validation", "--json", "--no-progress",
            "--confusion-png", str(tmp_path / "cm.png")]  # fmt: skip
    assert eval_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 40 and len(summary["models"]) == 2
    assert summary["accuracy"] == pytest.approx(logged["snapshots_validation/accuracy"])


def test_ema_survives_a_resume_bitwise(tmp_path):
    data = prepared_synthetic(tmp_path / "data", rows=300, seed=4)
    common = ["--config", str(REPO_ROOT / "tests/configs/tiny.yaml"), f"data.data_dir={data}",
              f"run.output_dir={tmp_path / 'out'}", "run.num_epochs=2", "optim.ema_decay=0.9",
              "tracking.enabled=false", "run.deterministic=true"]  # fmt: skip
    assert train_run([*common, "--run_name", "straight"])[0] == 0
    assert train_run([*common, "--run_name", "split", "run.max_steps=40"])[0] == 0
    assert train_run([*common, "--run_name", "split", "--resume", "latest"])[0] == 0
    straight = load_file(tmp_path / "out" / "straight" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "out" / "split" / "final" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
