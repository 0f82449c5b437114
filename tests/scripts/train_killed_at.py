"""Test launcher target: `emotionnet-train`, SIGKILLed by itself at one named moment of the run.

    python tests/scripts/train_killed_at.py MOMENT RUN_DIR LAST_STEP -- <emotionnet-train arguments>

The moments are the windows a kill -9 from outside can only hit by luck: inside a checkpoint write, the
last validation, the `best/` export before and after its swap, the `final/` export and the test
evaluation. "The final phase" begins once the checkpoint of LAST_STEP exists. Nothing else is changed:
the real commands run until the kill, which comes from a wrapper around the function named.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import data_prep.files
import emotionnet.evaluation.run_evaluator
import emotionnet.inference.export
import emotionnet.train.checkpoint
from emotionnet.cli.train import main


def kill_inside(module, name: str, when, after: bool = False) -> None:
    """SIGKILL this process when `module.name` is called with arguments for which `when` holds (before
    the call, or just after it returned)."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        hit = when(*args, **kwargs)
        if hit and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, name, wrapper)


def arm(moment: str, run_dir: Path, last_step: int) -> None:
    def final_phase() -> bool:
        return (run_dir / "checkpoints" / f"step_{last_step:08d}").is_dir()

    def export_of(name: str):
        return lambda staged, directory: directory.name == name and final_phase()

    moments = {
        # inside the first periodic checkpoint's write, before its manifest
        "checkpoint": (emotionnet.train.checkpoint, "write_manifest", lambda d, step, n: step < last_step, False),
        "last validation": (emotionnet.evaluation.run_evaluator, "score", lambda *a, **k: final_phase(), False),
        "best staged": (emotionnet.inference.export, "replace_directory", export_of("best"), False),
        "best exported": (emotionnet.inference.export, "replace_directory", export_of("best"), True),
        "best swapped": (data_prep.files, "exchange_directories", lambda a, b: b.name == "best" and final_phase(), True),
        "final export": (emotionnet.inference.export, "replace_directory", export_of("final"), False),
        "test": (
            emotionnet.evaluation.run_evaluator,
            "score",
            lambda *a, **k: (run_dir / "final").is_dir() and final_phase(),
            False,
        ),
    }  # fmt: skip
    module, name, when, after = moments[moment]
    kill_inside(module, name, when, after)


if __name__ == "__main__":
    moment, run_dir, last_step, separator, *train_args = sys.argv[1:]
    assert separator == "--", "usage: train_killed_at.py MOMENT RUN_DIR LAST_STEP -- ARGS"
    arm(moment, Path(run_dir), int(last_step))
    sys.exit(main(train_args))
