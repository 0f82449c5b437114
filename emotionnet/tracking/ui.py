"""emotionnet-mlflow-ui [OUTPUT_DIR]: browse the runs that training logged to its default local store.

Starts `mlflow server` on `<OUTPUT_DIR>/mlflow.db` (default OUTPUT_DIR: outputs), bound to 127.0.0.1
unless --host says otherwise: the UI has no login, so exposing it is an explicit choice.
"""

from __future__ import annotations

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
