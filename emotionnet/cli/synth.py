"""`emotionnet-synth OUT_CSV`: a synthetic FER2013-format CSV of drawn faces (data_prep.synth)."""

from __future__ import annotations

import sys
from pathlib import Path

from data_prep import synth
from data_prep.synth import write_synthetic_csv
from emotionnet.cli import report_user_error
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode, command_parser


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        prog="emotionnet-synth",
        description="Write a synthetic FER2013-format CSV (emotion,pixels,Usage) of drawn faces.",
        notes=synth.__doc__.partition("\n\n")[2],  # the class signal and nuisance
    )
    parser.add_argument("out_csv", help="output path; .csv.gz writes gzip")
    parser.add_argument("--rows", type=int, default=2000, help="number of faces (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")  # argparse exits 2 (BAD_INPUT)
    try:
        path = write_csv(args.out_csv, args.rows, args.seed)
    except UserError as err:
        return report_user_error("emotionnet-synth", err)
    print(f"wrote {args.rows} synthetic faces to {path}")
    return ExitCode.OK


def write_csv(out_csv: str, rows: int, seed: int) -> Path:
    """`write_synthetic_csv`, with an output path that cannot be written reported as the user's error."""
    try:
        return write_synthetic_csv(out_csv, rows, seed, progress=True)
    except OSError as err:
        raise UserError(f"cannot write {out_csv}: {err.strerror or err}") from err


if __name__ == "__main__":
    sys.exit(main())
