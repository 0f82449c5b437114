"""Loading an export: `EmotionNet.from_pretrained`, and descriptions whose sizes do not fit the weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emotionnet import EmotionNet
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.inference.export import DESCRIPTION_NAME, ExportError, load_export, save_export
from tests.training_utils import REPO_ROOT, TINY_MODEL


@pytest.fixture
def export(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_export(tmp_path / "m", EmotionNet(TINY_MODEL).state_dict(), TINY_MODEL, Preprocessing())


def tamper(export: Path, **model) -> Path:
    path = export / DESCRIPTION_NAME
    description = json.loads(path.read_text())
    description["model"].update(model)
    path.write_text(json.dumps(description))
    return path


def test_from_pretrained_gives_the_logits_of_the_export_loader(export) -> None:
    faces = torch.randn(4, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    loaded, _ = load_export(export)
    model = EmotionNet.from_pretrained(export)
    assert not model.training
    with torch.inference_mode():
        assert torch.equal(model(faces), loaded(faces))


def test_from_pretrained_refuses_a_folder_that_is_not_an_export(tmp_path) -> None:
    with pytest.raises(ExportError, match="is not an EmotionNet model export"):
        EmotionNet.from_pretrained(tmp_path)


def test_a_description_larger_than_its_weights_is_refused_naming_the_file_and_the_key(export) -> None:
    description = tamper(export, d_model=4096, depth=64)
    with pytest.raises(ExportError) as caught:
        load_export(export)
    message = str(caught.value)
    assert str(description) in message and "model.safetensors" in message
    assert "encoder." in message  # the first parameter whose shape differs
    assert "\n" not in message


def test_a_model_over_the_parameter_limit_is_refused_before_it_is_built(export, monkeypatch) -> None:
    import emotionnet.model.pretrained as pretrained

    monkeypatch.setattr(pretrained, "MAX_PARAMETERS", 1000)
    with pytest.raises(ExportError, match=rf"{DESCRIPTION_NAME}.*over the limit of 1,000"):
        load_export(export)


# Loads a tampered export in a fresh process and prints how much its peak RSS grew, in MB.
PEAK_GROWTH = """
import resource, sys
from emotionnet.inference.export import ExportError, load_export
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_export(sys.argv[1])
except ExportError as err:
    print(err, file=sys.stderr)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_tampered_description_allocates_nothing_before_it_is_refused(export) -> None:
    # 268M transformer parameters (1.07 GB in float32) if the description were believed.
    tamper(export, d_model=2048, depth=8)
    done = subprocess.run(
        [sys.executable, "-c", PEAK_GROWTH, str(export)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "does not fit" in done.stderr
    assert int(done.stdout) < 200, f"peak RSS grew by {done.stdout.strip()} MB"
