"""`emotionnet-mlflow-ui [OUTPUT_DIR]`: browse the runs that training logged to its default local store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from emotionnet.exit_codes import ExitCode, command_parser
from emotionnet.tracking import ui
from emotionnet.tracking.ui import LOOPBACK, server_command


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        prog="emotionnet-mlflow-ui",
        description=ui.__doc__,
    )
    parser.add_argument("output_dir", nargs="?", type=Path, default=Path("outputs"), help="run.output_dir")
    parser.add_argument("--host", default=LOOPBACK, help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    if not (args.output_dir / "mlflow.db").is_file():
        print(
            f"emotionnet-mlflow-ui: error: {args.output_dir} has no mlflow.db (no tracked run yet)",
            file=sys.stderr,
        )
        return ExitCode.BAD_INPUT
    if args.host != LOOPBACK:
        print(
            f"emotionnet-mlflow-ui: serving on {args.host}: anyone who can reach it can read the runs",
            file=sys.stderr,
        )
    print(f"MLflow UI: http://{'127.0.0.1' if args.host == LOOPBACK else args.host}:{args.port}", flush=True)
    command = server_command(args.output_dir, args.host, args.port)
    os.execv(command[0], command)  # the server replaces this process: Ctrl-C and signals reach it


if __name__ == "__main__":
    sys.exit(main())
