"""Named training recipes (`demo`, `fer2013`, `fer2013_cpu`): the YAML files of `configs/train/`,
shipped with the package. `--config` takes a recipe name or a path to any YAML file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from emotionnet import assets
from emotionnet.config import loader
from emotionnet.config.schema import TrainConfig
from emotionnet.model.emotionnet import ModelConfig

RECIPES_DIR = assets.CONFIGS / "train"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(spec: str) -> Path:
    """A YAML path as given, or the shipped recipe of that name."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml") and (RECIPES_DIR / f"{spec}.yaml").is_file():
        return RECIPES_DIR / f"{spec}.yaml"
    if path.exists():
        return path  # a directory or a device: reading it says which
    raise loader.ConfigError(
        f"--config {spec}: no such file, and no recipe of that name (recipes: {', '.join(recipe_names())})"
    )


def load_train_config(spec: str | None, overrides: Iterable[str] = ()) -> TrainConfig:
    """The recipe or YAML file `spec` (None: the defaults), then `section.key=value` overrides."""
    return loader.load(TrainConfig, resolve_recipe(spec) if spec else None, overrides)


def load_model_config(spec: str | None, overrides: Iterable[str] = ()) -> ModelConfig:
    """The model section of a recipe, or a flat model YAML (configs/model/), then `[model.]key=value`."""
    keys = [o.removeprefix("model.") for o in overrides]
    if spec is not None and "model" in loader.read_yaml(resolve_recipe(spec)):
        return load_train_config(spec, [f"model.{k}" for k in keys]).model
    return loader.load(ModelConfig, resolve_recipe(spec) if spec else None, keys)
