"""Fixtures of the GPU tests (tests/gpu/): small synthetic data, prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training_utils import prepared_synthetic


@pytest.fixture(scope="session")
def gpu_data(tmp_path_factory) -> Path:
    """600 synthetic faces prepped into Arrow shards (480 train, 60 validation, 60 test)."""
    return prepared_synthetic(tmp_path_factory.mktemp("gpu_data"), rows=600, seed=1)
