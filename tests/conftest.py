"""Shared pytest fixtures. Keep each fixture small and documented; data is generated, never downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib import cbook

from data_prep.synth import write_synthetic_csv

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FER_CSV = REPO_ROOT.parent / "shared" / "fer2013" / "fer2013_dev.csv.gz"


@pytest.fixture(autouse=True)
def _isolate_mlflow_tracking_uri():
    """`mlflow.set_tracking_uri` (called by in-process training) also sets MLFLOW_TRACKING_URI in
    os.environ: restore both after each test, or later tests talk to a server that is gone."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved
    if "mlflow" in sys.modules:
        from mlflow.tracking._tracking_service import utils

        utils._tracking_uri = saved  # MLflow's module-level default, reset the only way it offers


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory) -> Path:
    """A 300-row synthetic FER2013 CSV (seed 0): 240 Training, 30 PublicTest, 30 PrivateTest."""
    return write_synthetic_csv(tmp_path_factory.mktemp("synth") / "fer_synth.csv", rows=300, seed=0)


@pytest.fixture(scope="session")
def synth_csv_gz(tmp_path_factory) -> Path:
    """The same rows as `synth_csv`, gzip-compressed."""
    return write_synthetic_csv(tmp_path_factory.mktemp("synth_gz") / "fer_synth.csv.gz", rows=300, seed=0)


@pytest.fixture(scope="session")
def run_prep_cli():
    """Run `emotionnet-prep` in a fresh interpreter (as a user would); returns the CompletedProcess."""

    def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "emotionnet.cli.prep", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
        )

    return run


@pytest.fixture(scope="session")
def photo() -> Path:
    """Grace Hopper's portrait (512x600, one frontal face), shipped in matplotlib's sample data."""
    try:
        return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (OSError, ValueError):
        pytest.skip("matplotlib's sample data (grace_hopper.jpg) is not installed")


@pytest.fixture(scope="session")
def prepared_300(tmp_path_factory) -> Path:
    """A 300-row synthetic FER2013 (seed 5) prepped into Arrow shards, shared by every test that only
    reads it: 240 train, 30 validation, 30 test rows."""
    from tests.training_utils import prepared_synthetic

    return prepared_synthetic(tmp_path_factory.mktemp("prepared_300"), rows=300, seed=5)
