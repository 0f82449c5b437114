"""`emotionnet-synth OUT_CSV`: a synthetic FER2013-format CSV of drawn faces (data_prep.synth)."""

from __future__ import annotations

import sys

from data_prep import synth
from data_prep.synth import write_synthetic_csv
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
        path = write_synthetic_csv(args.out_csv, args.rows, args.seed, progress=True)
    except OSError as e:
        print(f"emotionnet-synth: error: cannot write {args.out_csv}: {e.strerror or e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(f"wrote {args.rows} synthetic faces to {path}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
