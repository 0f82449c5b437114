"""`emotionnet-mlflow-replay RUN_DIR`: put what a tracking outage missed into the run's MLflow run."""

from __future__ import annotations

import sys
from pathlib import Path

from emotionnet.cli import report_user_error
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode, command_parser
from emotionnet.tracking import replay as replay_module
from emotionnet.tracking.replay import replay


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        prog="emotionnet-mlflow-replay",
        description=replay_module.__doc__,
    )
    parser.add_argument("run_dir", type=Path, help="a training run directory (holds metrics.jsonl)")
    parser.add_argument(
        "--tracking-uri",
        help="the MLflow store to write to (default: the run's own, as described above)",
    )
    args = parser.parse_args(argv)
    try:
        result = replay(args.run_dir, args.tracking_uri)
    except UserError as err:
        return report_user_error("emotionnet-mlflow-replay", err)
    if result.created:
        print(f"{args.run_dir}: was never tracked; created MLflow run {result.run_id}")
    print(
        f"{args.run_dir}: uploaded {result.uploaded} metric values, {result.present} were already in MLflow"
    )
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
