"""`emotionnet-launch`: the launch command line (`launcher.commands` holds the two commands)."""

from __future__ import annotations

import sys

from emotionnet.cli import report_user_error
from emotionnet.errors import UserError
from launcher.commands import PROG, run_local, run_slurm


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["slurm"]:
            return run_slurm(argv[1:])
        return run_local(argv)
    except UserError as err:
        return report_user_error(PROG, err)


if __name__ == "__main__":
    sys.exit(main())
