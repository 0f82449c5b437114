"""scripts/ablations.py: every row is an MLflow run tagged ablation=<row>, seed=<n>, and the tool writes the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest

from tests.training_utils import REPO_ROOT, prepared_synthetic, train_env


@pytest.mark.slow
def test_rows_are_tagged_mlflow_runs_and_the_table_lists_every_seed(tmp_path):
    data = prepared_synthetic(tmp_path / "data", rows=300, seed=8)
    out = tmp_path / "ablations"
    env = {**train_env(), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "ablations.py"), "--steps", "3", "--data", str(data),
         "--only", "backbone,sgd", "--seeds", "0,1", "--jobs", "2", "--batch", "8", "--output-dir", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    rows = json.loads((out / "ablations.json").read_text())
    assert sorted((r["row"], r["seed"], r["steps"]) for r in rows) == [
        ("backbone", 0, 3), ("backbone", 1, 3), ("sgd", 0, 3), ("sgd", 1, 3)
    ]  # fmt: skip
    markdown = (out / "ablations.md").read_text()
    assert "| row | variant | acc s0 | acc s1 | mean acc |" in markdown
    assert markdown.count("| backbone |") == 1 and markdown.count("| sgd |") == 1
    assert "optim.name=sgd" in next(r["command"] for r in rows if r["row"] == "sgd")

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ablations"], output_format="list")
    assert sorted((r.data.tags["ablation"], r.data.tags["seed"]) for r in runs) == [
        ("backbone", "0"), ("backbone", "1"), ("sgd", "0"), ("sgd", "1")
    ]  # fmt: skip

    # --report rebuilds the same table from the run directories alone.
    (out / "ablations.md").unlink()
    again = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "ablations.py"), "--report", "--output-dir", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and "| sgd |" in (out / "ablations.md").read_text()
