"""The on-disk schema shared by data prep, training, evaluation and prediction."""

from __future__ import annotations

import datasets

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE

# FER2013's `Usage` column -> DatasetDict split name. Split order is fixed so outputs are deterministic.
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
SPLITS: tuple[str, ...] = tuple(USAGE_TO_SPLIT.values())

# Bump when columns or their types change; readers check it in the manifest.
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


def features() -> datasets.Features:
    """Columns of every split: the face as fixed-shape uint8, its class, and its source line number."""
    return datasets.Features(
        {
            "image": datasets.Array2D(shape=(IMAGE_SIZE, IMAGE_SIZE), dtype="uint8"),
            "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
            "row_id": datasets.Value("int64"),
        }
    )
