"""The built wheel is a complete product: installed into a fresh virtualenv and run from an empty folder
(no checkout on the path), it finds its recipes, launch templates, SLURM scripts and bundled model."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.training_utils import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv with only the wheel installed; its dependencies come from the test environment."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            root,
            REPO_ROOT,
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    site = Path(
        subprocess.run(
            [env_dir / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # Reuse the test environment's packages through a .pth line: the line only appends the folder, so
    # the checkout's editable-install hook in it is not run and `emotionnet` comes from the wheel.
    (site / "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(root.glob("emotionnet-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return env_dir


def run_installed(
    env_dir: Path, cwd: Path, *command: str, timeout: float = 600
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": ""}
    env.pop("PYTHONPATH")
    exe = env_dir / "bin" / "python"
    # Console scripts of a --target install are not on PATH: run each entry point's module instead.
    script = (
        f"import sys; from importlib.metadata import entry_points; "
        f"ep = entry_points(group='console_scripts')[{command[0]!r}]; sys.argv = [{command[0]!r}, *sys.argv[1:]]; "
        f"sys.exit(ep.load()())"
    )
    return subprocess.run(
        [exe, "-c", script, *command[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def empty_dir(tmp_path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_package_comes_from_the_wheel_not_the_checkout(installed, empty_dir):
    out = subprocess.run(
        [installed / "bin" / "python", "-c", "import emotionnet; print(emotionnet.__file__)"],
        cwd=empty_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(REPO_ROOT) not in out and "site-packages" in out


def test_synth_then_train_the_demo_recipe(installed, empty_dir):
    synth = run_installed(installed, empty_dir, "emotionnet-synth", "demo.csv", "--rows", "300")
    assert synth.returncode == 0, synth.stderr
    train = run_installed(
        installed, empty_dir, "emotionnet-train", "--config", "demo", "--csv_file", "demo.csv",
        "run.max_steps=4", "run.num_epochs=1", "data.num_workers=0", "tracking.enabled=false",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert "best validation accuracy" in train.stdout
    assert list((empty_dir / "outputs").rglob("best/model.safetensors"))


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed-zero3"])
def test_launch_dry_run_finds_its_accelerate_templates(installed, empty_dir, strategy):
    result = run_installed(
        installed, empty_dir, "emotionnet-launch", "--dry-run", "--gpus", "4", "--strategy", strategy,
        "--config", "fer2013",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "accelerate launch" in result.stdout and "num_processes" in result.stdout


def test_slurm_dry_run_renders_the_batch_script(installed, empty_dir):
    result = run_installed(
        installed, empty_dir, "emotionnet-launch", "slurm", "--dry-run", "--nodes", "2", "--gpus-per-node", "8",
        "--config", "fer2013",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --nodes=2" in result.stdout


def test_predict_uses_the_bundled_model(installed, empty_dir):
    face = torch.randint(0, 256, (48, 48), dtype=torch.uint8).numpy()
    Image.fromarray(face).save(empty_dir / "face.png")
    result = run_installed(installed, empty_dir, "emotionnet-predict", "--no-detect", "face.png", "--json")
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout and "emotionnet-fer2013" in result.stdout


def test_recipes_are_listed(installed, empty_dir):
    result = run_installed(installed, empty_dir, "emotionnet-train", "--list-recipes")
    assert result.returncode == 0, result.stderr
    assert {"demo", "fer2013", "fer2013_cpu"} <= set(result.stdout.split())
