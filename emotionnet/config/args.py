"""The training command line: `--config`, `--resume`, `--run_name`, the seed project's flags and
`section.key=value` overrides, turned into config overrides. Shared by `emotionnet-train` and
`emotionnet-launch` (which checks a configuration before launching it)."""

from __future__ import annotations

import argparse

from emotionnet.exit_codes import command_parser

# The seed command's flags and the config keys they set.
LEGACY_FLAGS = {
    "csv_file": ("data.csv_file", str),
    "data_dir": ("data.data_dir", str),
    "batch_size": ("data.batch_size", int),
    "num_epochs": ("run.num_epochs", int),
    "lr": ("optim.lr", float),
    "weight_decay": ("optim.weight_decay", float),
    "num_workers": ("data.num_workers", int),
    "output_dir": ("run.output_dir", str),
    "mixed_precision": ("run.mixed_precision", str),
    "seed": ("run.seed", int),
}


def build_train_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = command_parser("emotionnet-train", description)
    parser.add_argument(
        "--config",
        help="a recipe name (demo, fer2013, fer2013_cpu; `emotionnet-train --list-recipes`) or a YAML file",
    )
    parser.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    parser.add_argument(
        "--resume", help="'latest' (of --run_name, or the newest run) or a checkpoint directory"
    )
    parser.add_argument("--run_name", help="run directory name under the output dir")
    for flag, (key, kind) in LEGACY_FLAGS.items():
        parser.add_argument(f"--{flag}", type=kind, help=f"same as {key}=...")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


def parse_train_args(
    argv: list[str] | None = None, description: str | None = None
) -> tuple[argparse.Namespace, list[str]]:
    """The parsed arguments and every flag turned into a `section.key=value` override."""
    args = build_train_parser(description).parse_intermixed_args(argv)
    overrides = [
        f"{key}={getattr(args, flag)}"
        for flag, (key, _) in LEGACY_FLAGS.items()
        if getattr(args, flag) is not None
    ]
    if args.resume:
        overrides.append(f"run.resume={args.resume}")
    if args.run_name:
        overrides.append(f"run.run_name={args.run_name}")
    return args, overrides + args.overrides
