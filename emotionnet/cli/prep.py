"""`emotionnet-prep INPUT OUTPUT_DIR`: FER2013 CSV / CSV.gz / image folder -> Arrow shards + manifest.
`emotionnet-prep --verify DIR`: check a prepared dataset against its manifest (shard sizes and SHA-256, rows)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from data_prep.manifest import DamagedDatasetError, refresh_hint
from data_prep.prepare import PrepOptions, prepare
from data_prep.writer import DEFAULT_SHARD_ROWS, Sharding
from emotionnet.cli import report_user_error
from emotionnet.data.loaders import load_splits, read_manifest
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode, command_parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog="emotionnet-prep",
        description="Convert FER2013 (emotion,pixels,Usage CSV, .csv.gz, or the train/ test/ image-folder "
        "release) into a Hugging Face DatasetDict of Arrow shards with a manifest.json.",
    )
    parser.add_argument(
        "input", nargs="?", help="FER2013 .csv / .csv.gz file, or image-folder root (train/, test/)"
    )
    parser.add_argument(
        "output_dir", nargs="?", help="directory to create (written to a temp dir, then renamed)"
    )
    parser.add_argument(
        "--verify",
        metavar="DIR",
        help="instead of preparing: check the prepared dataset DIR against its manifest (every shard's size "
        "and SHA-256, every split's rows); exit 2 naming the first damaged file",
    )
    shards = parser.add_mutually_exclusive_group()
    shards.add_argument("--num-shards", type=_positive, help="shards per split")
    shards.add_argument(
        "--shard-size", type=_positive, metavar="ROWS", help=f"rows per shard (default {DEFAULT_SHARD_ROWS})"
    )
    parser.add_argument(
        "--on-bad-rows",
        choices=["strict", "quarantine"],
        default="strict",
        help="strict: any invalid row fails the prep; quarantine: write them to rejects.csv and go on",
    )
    parser.add_argument("--max-errors", type=_positive, default=10, help="invalid rows listed in an error")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output at OUTPUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # so `kill` (SIGTERM) cleans up the temp dir like Ctrl-C does


def verify(data_dir: str) -> int:
    """`--verify DIR`: read every shard of a prepared dataset and check it against the manifest."""
    try:
        manifest = read_manifest(Path(data_dir))
        if not manifest.records_shards:
            raise DamagedDatasetError(
                f"{data_dir}: its manifest records no shard sizes or hashes, so nothing can be verified; "
                f"{refresh_hint(manifest, Path(data_dir))}"
            )
        splits = load_splits(data_dir, verify_hashes=True)
    except UserError as err:
        return report_user_error("emotionnet-prep", err)
    shards = sum(stats.shards for stats in manifest.splits.values())
    rows = ", ".join(f"{name} {split.num_rows}" for name, split in splits.items())
    print(f"{data_dir}: {len(splits)} splits, {shards} shards match the manifest ({rows} rows)")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify is not None:
        if args.input is not None:
            parser.error("--verify DIR takes no INPUT or OUTPUT_DIR")
        return verify(args.verify)
    if args.output_dir is None:
        parser.error("INPUT and OUTPUT_DIR are required (or --verify DIR)")
    options = PrepOptions(
        sharding=Sharding(num_shards=args.num_shards, shard_rows=args.shard_size),
        on_bad_rows=args.on_bad_rows,
        max_errors=args.max_errors,
        bad_rows_hint="use --on-bad-rows quarantine to set them aside and convert the rest",
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    # The prep's notices (e.g. a killed prep's temp dir it removed), one line each on stderr.
    notices = logging.StreamHandler(sys.stderr)
    notices.setFormatter(logging.Formatter("emotionnet-prep: %(message)s"))
    logger = logging.getLogger("data_prep")
    logger.addHandler(notices)
    try:
        manifest = prepare(args.input, args.output_dir, options)
    except UserError as err:  # bad input, invalid rows (strict), a refused or unwritable output path
        return report_user_error("emotionnet-prep", err)
    except KeyboardInterrupt:
        print(f"emotionnet-prep: interrupted; nothing was written to {args.output_dir}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        logger.removeHandler(notices)
    splits = ", ".join(f"{name} {stats.rows}" for name, stats in manifest.splits.items())
    rejected = f"{manifest.rows_rejected}" + (
        f" (see {args.output_dir}/{manifest.rejects_file})" if manifest.rejects_file else ""
    )
    print(
        f"read {manifest.rows_read} rows = written {manifest.rows_written} ({splits}) + rejected {rejected}; "
        f"{manifest.wall_time_s:.1f} s -> {args.output_dir}"
    )
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
