"""The learning rate against the global batch: `optim.lr_scaling` from `optim.reference_batch`, the resolved
rate in the optimizer, the log, environment.jsonl and MLflow's params; every recipe names its rule."""

from __future__ import annotations

import logging
import math
import re

import pytest
import yaml

from emotionnet.cli.train import run as train_run
from emotionnet.config import loader as config_loader
from emotionnet.config.schema import OptimConfig, TrainConfig
from emotionnet.train.optim import scaled_lr
from tests.training_utils import REPO_ROOT, TINY_CONFIG, prepared_synthetic, read_jsonl

RECIPES = sorted((REPO_ROOT / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize(
    ("rule", "global_batch", "expected"),
    [("none", 64, 2e-4), ("linear", 64, 1.6e-3), ("sqrt", 64, 2e-4 * math.sqrt(8)), ("linear", 4, 1e-4),
     ("sqrt", 8, 2e-4)],
)  # fmt: skip
def test_scaled_lr_follows_the_rule(rule, global_batch, expected):
    cfg = OptimConfig(lr=2e-4, lr_scaling=rule, reference_batch=8)
    assert scaled_lr(cfg, global_batch) == pytest.approx(expected, rel=1e-12)


def test_lr_scaling_is_checked_at_load():
    with pytest.raises(config_loader.ConfigError, match="lr_scaling"):
        config_loader.load(TrainConfig, overrides=["optim.lr_scaling=cubic"])
    with pytest.raises(config_loader.ConfigError, match="reference_batch"):
        config_loader.load(TrainConfig, overrides=["optim.reference_batch=0"])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_names_its_rule_and_why(recipe):
    optim = yaml.safe_load(recipe.read_text())["optim"]
    assert optim["lr_scaling"] in ("none", "linear", "sqrt")
    assert "reference_batch" in optim or optim["lr_scaling"] == "none"
    (line,) = [x for x in recipe.read_text().splitlines() if re.match(r"\s+lr_scaling:", x)]
    assert "#" in line, f"{recipe.name}: say why on the lr_scaling line"


@pytest.mark.slow
def test_resolved_lr_is_used_logged_and_tracked(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = prepared_synthetic(tmp_path / "data", rows=200, seed=3)
    caplog.set_level(logging.INFO)
    code, trainer = train_run(
        ["--config", str(TINY_CONFIG), f"data.data_dir={data}", f"run.output_dir={tmp_path}",
         "--run_name", "scaled", "run.max_steps=2", "optim.lr_scaling=linear", "optim.reference_batch=4",
         "tracking.system_metrics=false", "tracking.log_model=false"]
    )  # fmt: skip
    assert code == 0
    resolved = 3e-3 * 8 / 4  # tiny.yaml: lr 3e-3 at batch 8 on one process, tuned for 4
    assert trainer.parts.scheduler.scheduler.base_lrs == pytest.approx([resolved, resolved])
    assert any(f"learning rate {resolved:g}" in r.getMessage() for r in caplog.records)
    (start,) = read_jsonl(tmp_path / "scaled" / "environment.jsonl")
    assert (start["optim.resolved_lr"], start["data.global_batch"]) == (str(resolved), "8")

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tracked,) = client.search_runs([client.get_experiment_by_name("emotionnet").experiment_id])
    assert tracked.data.params["optim.resolved_lr"] == str(resolved)
    assert tracked.data.params["optim.lr_scaling"] == "linear"
