"""`emotionnet-launch`: the launch command line (`launcher.commands` holds the two commands)."""

from __future__ import annotations

import sys

from emotionnet.exit_codes import ExitCode
from launcher.accelerate_cmd import LaunchError
from launcher.commands import PROG, run_local, run_slurm


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["slurm"]:
            return run_slurm(argv[1:])
        return run_local(argv)
    except LaunchError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
