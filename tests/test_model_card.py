"""The bundled model's card: YAML front matter model hubs read, and a usage example that runs."""

from __future__ import annotations

import re

import torch
import yaml

from emotionnet.assets import BUNDLED_MODEL
from emotionnet.data.transforms import TTA_MODES
from tests.training_utils import REPO_ROOT

CARD = BUNDLED_MODEL / "MODEL_CARD.md"


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "the card does not open with a --- YAML block ---"
    return yaml.safe_load(match.group(1))


def test_the_card_opens_with_hub_metadata_and_the_measured_figures_per_tta_mode() -> None:
    card = CARD.read_text()
    metadata = front_matter(card)
    assert metadata["library_name"] == "emotionnet"
    assert metadata["pipeline_tag"] == "image-classification"
    assert metadata["license"] == "mit"
    assert metadata["datasets"] == ["fer2013"]
    assert {"facial-expression-recognition", "fer2013"} <= set(metadata["tags"])
    (result,) = metadata["model-index"][0]["results"]
    assert result["dataset"]["split"] == "PublicTest"
    metrics = {(m["type"], m["args"]["tta"]): m["value"] for m in result["metrics"]}
    assert {tta for _, tta in metrics} == set(TTA_MODES)
    for tta in TTA_MODES:  # the figures of the card's own table, measured on these weights
        row = re.search(rf"^\| {tta} \| ([0-9.]+) \| ([0-9.]+) \|$", card, re.M)
        assert (metrics["accuracy", tta], metrics["f1", tta]) == (float(row[1]), float(row[2]))


def test_the_cards_usage_example_classifies_faces(monkeypatch) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", CARD.read_text(), re.S)
    assert "EmotionNet.from_pretrained(" in example
    monkeypatch.chdir(REPO_ROOT)  # the example names the bundle by its path in the repository
    scope = {"faces": torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)}
    exec(example, scope)
    assert scope["logits"].shape == (3, len(scope["description"].class_names))
