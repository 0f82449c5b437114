"""Every file path and recipe that README, docs and `--help` texts tell users to pass exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from emotionnet.config.recipes import recipe_names
from tests.training_utils import REPO_ROOT

# Repository paths users are told to pass: configs, SLURM scripts, scripts, docs, test configs.
PATH_PATTERN = re.compile(
    r"(?<![\w/.<-])((?:configs|slurm|scripts|docs|tests/configs|benchmarks)/[\w./-]+\.(?:yaml|json|sbatch|py|md))"
)
RECIPE_PATTERN = re.compile(r"--config[ =]([\w.-]+)(?=[\s`'\"]|$)")
COMMANDS = [
    "emotionnet-train", "emotionnet-eval", "emotionnet-predict", "emotionnet-summary", "emotionnet-prep",
    "emotionnet-synth", "emotionnet-launch", "emotionnet-mlflow-replay", "emotionnet-mlflow-ui", "emotionnet-export",
]  # fmt: skip


def help_text(command: str, *sub: str) -> str:
    script = Path(sys.executable).parent / command
    result = subprocess.run([script, *sub, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents() -> dict[str, str]:
    texts = {
        str(p.relative_to(REPO_ROOT)): p.read_text()
        for p in [REPO_ROOT / "README.md", *REPO_ROOT.glob("docs/*.md")]
    }
    for command in COMMANDS:
        texts[f"{command} --help"] = help_text(command)
    texts["emotionnet-launch slurm --help"] = help_text("emotionnet-launch", "slurm")
    return texts


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return documents()


def test_named_repository_paths_exist(texts):
    missing = [
        f"{where}: {path}"
        for where, text in texts.items()
        for path in PATH_PATTERN.findall(text)
        if "*" not in path and not (REPO_ROOT / path).exists()
    ]
    assert not missing, "\n".join(missing)


def test_named_recipes_exist(texts):
    names = set(recipe_names())
    unknown = [
        f"{where}: --config {name}"
        for where, text in texts.items()
        for name in RECIPE_PATTERN.findall(text)
        if "/" not in name
        and not name.endswith((".yaml", ".yml"))
        and name not in names
        and name.isidentifier()
        and not name.isupper()  # a metavar such as CONFIG
    ]
    assert not unknown, "\n".join(unknown)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_the_exit_code_table(command):
    assert "exit codes:" in help_text(command)
