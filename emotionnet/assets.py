"""Files the package ships: recipes and launch templates (`configs/`), SLURM scripts (`slurm/`) and the
bundled model (`models/`).

In a checkout they are the top-level folders users read and edit (linked into the package as
`emotionnet/_assets/`); an installed wheel carries copies. Either way they are found through
`importlib.resources`, never relative to the working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def asset_path(*parts: str) -> Path:
    """A shipped file or folder as a filesystem path (wheels install unzipped, so this is a real path)."""
    return Path(str(files("emotionnet").joinpath("_assets", *parts))).resolve()


CONFIGS = asset_path("configs")
SLURM = asset_path("slurm")
BUNDLED_MODEL = asset_path("models", "emotionnet-fer2013")
