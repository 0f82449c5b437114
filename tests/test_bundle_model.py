"""scripts/bundle_model.py: a run's best export -> fp16 bundle + model card, used by eval as the default."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from emotionnet.assets import BUNDLED_MODEL
from emotionnet.cli.eval import main as eval_main
from emotionnet.cli.train import run as train_run
from tests.conftest import SHARED_FER_CSV
from tests.training_utils import REPO_ROOT, prepared_synthetic


def test_bundle_is_fp16_with_a_card_and_is_the_default_model_of_eval(tmp_path):
    data = prepared_synthetic(tmp_path / "data", rows=300, seed=5)
    code, _ = train_run([
        "--config", str(REPO_ROOT / "tests/configs/tiny.yaml"), f"data.data_dir={data}",
        f"run.output_dir={tmp_path / 'out'}", "--run_name", "r", "run.num_epochs=1", "tracking.enabled=false",
    ])  # fmt: skip
    assert code == 0
    bundle = tmp_path / "bundle"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts/bundle_model.py"), str(tmp_path / "out" / "r"),
         "--data", str(data), "--command", "emotionnet-train --config tiny.yaml", "--out", str(bundle),
         "--hardware", "a test machine"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    weights = load_file(bundle / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "emotionnet-train --config tiny.yaml" in card and "| tencrop |" in card and "| disgust |" in card
    assert "on a test machine" in card
    metadata = yaml.safe_load(card.split("---\n")[1])  # the front matter model hubs read
    assert (
        metadata["pipeline_tag"] == "image-classification" and metadata["model-index"][0]["name"] == "bundle"
    )
    assert 'EmotionNet.from_pretrained("models/bundle")' in card
    image = re.search(r"!\[[^]]*\]\(([^)]+)\)", card).group(1)  # the card shows its confusion matrix
    assert (bundle / image).stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")) == []  # staging removed

    # A bundle whose evaluation fails leaves the previous bundle whole.
    failed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts/bundle_model.py"), str(tmp_path / "out" / "r"),
         "--data", str(tmp_path / "missing"), "--command", "other", "--out", str(bundle)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode != 0
    assert (bundle / "MODEL_CARD.md").read_text() == card
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")) == []

    # With no model argument, emotionnet-eval takes $EMOTIONNET_MODEL: the bundle's figures come back.
    env = {**os.environ, "EMOTIONNET_MODEL": str(bundle)}
    evaluated = subprocess.run(
        [sys.executable, "-m", "emotionnet.cli.eval", str(data), "--split", "validation", "--tta", "tencrop",
         "--json", "--no-progress", "--confusion-png", str(tmp_path / "again.png")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summary = json.loads(evaluated.stdout)
    accuracy_line = next(line for line in done.stdout.splitlines() if "tencrop TTA" in line)
    assert f"accuracy {summary['accuracy']:.4f}" in accuracy_line


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_FER_CSV.exists(), reason=f"{SHARED_FER_CSV} not present")
def test_bundled_model_reproduces_its_card_on_real_publictest(tmp_path, capsys):
    """The committed model, evaluated on the real PublicTest rows, gives the accuracy its card states."""
    card = (BUNDLED_MODEL / "MODEL_CARD.md").read_text()
    stated = float(re.search(r"^\| none \| ([0-9.]+) \|", card, re.MULTILINE).group(1))
    args = [str(SHARED_FER_CSV), "--split", "validation", "--json", "--no-progress",
            "--confusion-png", str(tmp_path / "cm.png")]  # fmt: skip
    assert eval_main(args) == 0  # no model given: the bundled one
    summary = json.loads(capsys.readouterr().out)
    assert summary["models"] == [str(BUNDLED_MODEL)] and summary["n"] == 3589
    assert summary["accuracy"] == pytest.approx(stated, abs=5e-5)
