"""`emotionnet-summary`: EmotionNet's per-stage parameters, output shapes and FLOPs for a configuration;
with --augment-grid, a PNG of what the configuration's training augmentation does to faces instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from data_prep.schema import MANIFEST_NAME, NUM_CLASSES
from data_prep.synth import render_faces
from emotionnet.cli import report_user_error
from emotionnet.config.recipes import load_model_config, load_train_config
from emotionnet.data.augment import augment_grid, write_augment_grid, write_png
from emotionnet.data.loaders import load_splits
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode, command_parser
from emotionnet.model import summary
from emotionnet.model.summary import summarize

GRID_FACES = 8


def write_grid(args: argparse.Namespace) -> Path:
    """Faces of the prepared training split (--data-dir, else the config's data.data_dir when prepared,
    else synthetic faces) next to their augmentation in the first epochs."""
    cfg = load_train_config(args.config, args.overrides)
    pre = Preprocessing(input_size=cfg.model.input_size)
    data_dir = Path(args.data_dir or cfg.data.data_dir)
    prepared = args.data_dir or (data_dir / MANIFEST_NAME).is_file()
    split = load_splits(data_dir)["train"] if prepared else None
    try:
        if split is not None:
            return write_augment_grid(args.augment_grid, cfg.augment, pre, cfg.run.seed, split, GRID_FACES)
        labels = np.arange(GRID_FACES) % NUM_CLASSES
        faces = torch.from_numpy(render_faces(labels, np.random.default_rng(0)))[:, None]
        grid = augment_grid(cfg.augment, pre, cfg.run.seed, faces, np.arange(GRID_FACES))
        return write_png(grid, args.augment_grid)
    except OSError as err:  # the PNG's location
        raise UserError(f"cannot write {args.augment_grid}: {err.strerror or err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        prog="emotionnet-summary",
        description=summary.__doc__,
    )
    parser.add_argument(
        "--config",
        help="a recipe name or YAML file: a training recipe, or a flat model YAML (configs/model/)",
    )
    parser.add_argument(
        "--augment-grid",
        metavar="OUT.png",
        help="instead of the summary, write a grid of faces (one per row: the original, then its "
        "augmentation in epochs 0-6) for the training recipe; overrides are then section.key=value, "
        "e.g. augment.rotation_degrees=30",
    )
    parser.add_argument(
        "--data-dir",
        help="with --augment-grid: the prepared dataset to take faces from (default: the config's "
        "data.data_dir if prepared, else synthetic faces)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="[model.]key=value overrides, e.g. depth=4 pretrained=null"
    )
    args = parser.parse_args(argv)
    try:
        if args.augment_grid:
            print(f"wrote {write_grid(args)}")
        else:
            print(summarize(load_model_config(args.config, args.overrides)))
    except UserError as err:
        return report_user_error("emotionnet-summary", err)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
