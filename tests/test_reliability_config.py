"""Configuration under hostile input: values of dict fields, YAML alias bombs, oversized, non-UTF-8 and
non-file config paths, counts the machine cannot run, and settings that must fail before a run directory
exists. docs/reliability.md lists each promise with its test here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emotionnet.config import loader
from emotionnet.config.loader import ConfigError
from emotionnet.config.recipes import load_train_config
from emotionnet.config.schema import TrainConfig
from emotionnet.data.loaders import usable_cpus
from emotionnet.exit_codes import ExitCode
from tests.test_reliability_train import one_error_line, train
from tests.training_utils import REPO_ROOT, prepared_synthetic


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [("tracking:\n  tags: {team: [1, 2]}\n", "tracking.tags.team: expected str, got [1, 2]"),
     ("tracking:\n  tags: {team: {a: b}}\n", "tracking.tags.team: expected str, got {'a': 'b'}"),
     ("tracking:\n  tags: {7: seven}\n", "tracking.tags key 7: expected str, got 7")],
)  # fmt: skip
def test_the_values_of_a_dict_field_are_type_checked(tmp_path, yaml_text, message):
    path = tmp_path / "tags.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
        loader.load(TrainConfig, path)


def _alias_bomb(levels: int) -> str:
    """Tags whose last value is 9 ** levels strings once its aliases are expanded (in a few hundred bytes)."""
    tags = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    tags += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "tracking:\n  tags:\n" + "".join(f"    {tag}\n" for tag in tags)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels=9))  # 9^9 = 387 million strings once expanded
    started = time.perf_counter()
    with pytest.raises(
        ConfigError, match=rf"config file {path}: its aliases expand to more than [0-9,]+ values"
    ):
        loader.load(TrainConfig, path)
    assert time.perf_counter() - started < 5
    with pytest.raises(ConfigError, match="aliases expand to more than"):  # an override is YAML too
        nested = ", ".join(f"&a{i} [{', '.join([f'*a{i - 1}'] * 4)}]" for i in range(1, 13))
        loader.parse_override(f"tracking.tags=[&a0 [x, x, x, x], {nested}]")


def test_lists_nested_too_deeply_are_refused_in_one_line():
    with pytest.raises(
        ConfigError, match=r"override 'tracking.tags=\[\[\[.*' nests its lists or mappings too deeply"
    ):
        loader.parse_override("tracking.tags=" + "[" * 100_000)


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "data: &data\n  batch_size: 16\n  eval_batch_size: 16\ntracking:\n  tags: {a: &v x, b: *v}\n"
    )
    assert loader.load(TrainConfig, path).tracking.tags == {"a": "x", "b": "x"}


def test_a_config_file_over_the_size_limit_is_refused_unparsed(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("run:\n  seed: 1\n" + "# padding\n" * 200_000)  # 2 MB of comments
    with pytest.raises(ConfigError, match=rf"config file {path} is 2\.0 MB, over the limit of 1 MB"):
        loader.load(TrainConfig, path)


def test_a_config_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("tracking:\n  tags: {owner: José}\n".encode("latin-1"))
    with pytest.raises(
        ConfigError, match=rf"config file {path} is not UTF-8 text \(byte 0xe9 at offset 29\)"
    ):
        loader.load(TrainConfig, path)


@pytest.mark.parametrize(("spec", "kind"), [("<dir>", "a directory"), ("/dev/zero", "a character device")])
def test_a_config_path_that_is_not_a_file_is_reported_as_what_it_is(tmp_path, spec, kind):
    spec = spec.replace("<dir>", str(tmp_path))
    with pytest.raises(ConfigError, match=f"config file {spec} is {kind}, not a YAML file"):
        load_train_config(spec)


@pytest.mark.parametrize("key", ["data.num_workers", "run.num_threads"])
def test_a_count_of_processes_or_threads_beyond_the_machine_is_refused_at_load(key):
    limit = 4 * usable_cpus()
    assert load_train_config(None, [f"{key}={limit}"])  # up to 4 per usable CPU
    with pytest.raises(ConfigError, match=rf"{key}=1000 is more than this machine can run: at most {limit} "):
        load_train_config(None, [f"{key}=1000"])


def test_the_bound_follows_the_cpus_this_process_may_use():
    # One CPU in the affinity mask (as `taskset -c 0` or a SLURM allocation of one core gives): at most 4.
    check = (
        "from emotionnet.config.recipes import load_train_config as load; load(None, ['data.num_workers=5'])"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=120, preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))  # fmt: skip
    assert (
        "data.num_workers=5 is more than this machine can run: at most 4 (4 per CPU, 1 CPU usable here)"
        in (result.stderr)
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_synthetic(tmp_path_factory.mktemp("config_data"), rows=60, seed=3)


@pytest.mark.parametrize(
    ("override", "message"),
    [("optim.lr=-1", "optim.lr must be a finite number > 0, got -1.0"),
     ("optim.lr=.nan", "optim.lr must be a finite number > 0, got nan"),
     ("optim.beta2=1.5", "optim.beta2 must be in [0, 1), got 1.5"),
     ("optim.weight_decay=-0.1", "optim.weight_decay must be a finite number >= 0, got -0.1")],
)  # fmt: skip
def test_an_invalid_optimizer_setting_fails_before_the_run_directory_is_created(
    tmp_path, data_dir, capsys, override, message
):
    output_dir = tmp_path / "out"
    code, _ = train(data_dir, output_dir, "--run_name", "r", override)
    assert code == ExitCode.BAD_INPUT
    assert message in one_error_line(capsys.readouterr().err)
    assert not output_dir.exists()
