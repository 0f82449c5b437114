"""emotionnet-mlflow-ui [OUTPUT_DIR]: browse the runs that training logged to its default local store.

Starts `mlflow server` on `<OUTPUT_DIR>/mlflow.db` (default OUTPUT_DIR: outputs), bound to 127.0.0.1
unless --host says otherwise: the UI has no login, so exposing it is an explicit choice.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"


def server_command(output_dir: Path, host: str = LOOPBACK, port: int = 5000) -> list[str]:
    """The `mlflow server` command line for an output directory's default store."""
    root = output_dir.resolve()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        # Where runs of experiments created by the server itself would go; training sets its own.
        "--default-artifact-root", (root / "mlartifacts").as_uri(),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emotionnet-mlflow-ui", description=__doc__)
    parser.add_argument("output_dir", nargs="?", type=Path, default=Path("outputs"), help="run.output_dir")
    parser.add_argument("--host", default=LOOPBACK, help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    if not (args.output_dir / "mlflow.db").is_file():
        print(
            f"emotionnet-mlflow-ui: {args.output_dir} has no mlflow.db (no tracked run yet)", file=sys.stderr
        )
        return 2
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
