"""Typed training configuration: YAML + dotted overrides, with one clear message per mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emotionnet.config import loader as config_loader
from emotionnet.config.args import parse_train_args as parse_args
from emotionnet.config.loader import ConfigError
from emotionnet.config.schema import TrainConfig
from tests.training_utils import REPO_ROOT, TINY_CONFIG


def test_defaults_match_the_seed_command():
    cfg = TrainConfig()
    assert (cfg.data.batch_size, cfg.run.num_epochs, cfg.optim.lr, cfg.optim.weight_decay) == (
        8,
        30,
        1e-4,
        1e-5,
    )
    assert (cfg.data.num_workers, cfg.run.output_dir, cfg.run.seed, cfg.data.data_dir) == (
        4, "outputs", 42, "dataset/fer2013")  # fmt: skip


def test_yaml_then_overrides_in_order():
    cfg = config_loader.load(TrainConfig, TINY_CONFIG, ["optim.lr=3e-4", "model.depth=2", "run.max_steps=7"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string: accepted as float
    assert cfg.model.depth == 2 and cfg.run.max_steps == 7
    assert cfg.model.d_model == 32  # from the YAML file


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown key optim\.lrr.*valid keys of optim: name, lr, weight_decay"
    ):
        config_loader.load(TrainConfig, None, ["optim.lrr=1"])


def test_unknown_section_lists_the_sections():
    with pytest.raises(ConfigError, match="unknown key optimizer; valid keys: run, data"):
        config_loader.load(TrainConfig, None, ["optimizer.lr=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
        ("data.batch_size=8.5", "data.batch_size: expected int, got 8.5"),
        ("run.mixed_precision=fp8", "run.mixed_precision: 'fp8' is not one of"),
        ("run.deterministic=maybe", "run.deterministic: expected true/false"),
        ("optim.lr", "not of the form section.key=value"),
    ],
)
def test_wrong_types_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config_loader.load(TrainConfig, None, [override])


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        config_loader.load(TrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match=f"config file {bad} is not valid YAML"):
        config_loader.load(TrainConfig, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        config_loader.load(TrainConfig, scalar)


def test_seed_flags_map_to_config_keys():
    _, overrides = parse_args(["--csv_file", "x.csv", "--batch_size", "16", "--lr", "0.01", "--mixed_precision",
                               "off", "model.depth=3"])  # fmt: skip
    cfg = config_loader.load(TrainConfig, None, overrides)
    assert (cfg.data.csv_file, cfg.data.batch_size, cfg.optim.lr, cfg.model.depth) == ("x.csv", 16, 0.01, 3)
    assert cfg.run.mixed_precision == "off"


def test_flatten_gives_dotted_keys():
    flat = config_loader.flatten(config_loader.to_dict(TrainConfig()))
    assert flat["optim.lr"] == 1e-4 and flat["model.input_size"] == TrainConfig().model.input_size


def test_cli_reports_config_errors_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "emotionnet.cli.train", "optim.nope=1"], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("emotionnet-train: error: unknown key optim.nope")
    assert "Traceback" not in result.stderr


def test_cli_reports_missing_data_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "emotionnet.cli.train", f"data.data_dir={tmp_path / 'none'}",
         f"data.csv_file={tmp_path / 'none.csv'}"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no prepared dataset at" in result.stderr and "Traceback" not in result.stderr
