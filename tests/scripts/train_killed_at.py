"""Test launcher target: `emotionnet-train`, signalled by itself at named moments of the run.

    python tests/scripts/train_killed_at.py MOMENT[:SIGNAL][,...] RUN_DIR LAST_STEP -- <emotionnet-train args>

SIGNAL defaults to KILL; each moment signals once.
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
import emotionnet.train.trainer
from emotionnet.cli.train import main


def signal_inside(module, name: str, when, after: bool, signum: int) -> None:
    """Send `signum` to this process the first time `module.name` is called with arguments for which `when`
    holds (before the call, or just after it returned)."""
    original = getattr(module, name)
    fired = []

    def wrapper(*args, **kwargs):
        hit = not fired and when(*args, **kwargs)
        if hit:
            fired.append(True)
            if not after:
                os.kill(os.getpid(), signum)
        result = original(*args, **kwargs)
        if hit and after:
            os.kill(os.getpid(), signum)
        return result

    setattr(module, name, wrapper)


def arm(moment: str, run_dir: Path, last_step: int, signum: int) -> None:
    def final_phase() -> bool:
        return (run_dir / "checkpoints" / f"step_{last_step:08d}").is_dir()

    def export_of(name: str):
        return lambda staged, directory: directory.name == name and final_phase()

    moments = {
        "start-up": (emotionnet.train.trainer, "build_components", lambda *a: True, False),
        "first step": (emotionnet.train.trainer.Trainer, "train_step", lambda *a: True, False),
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
    signal_inside(module, name, when, after, signum)


if __name__ == "__main__":
    moments, run_dir, last_step, separator, *train_args = sys.argv[1:]
    assert separator == "--", "usage: train_killed_at.py MOMENT[:SIGNAL][,...] RUN_DIR LAST_STEP -- ARGS"
    for spec in moments.split(","):
        moment, _, name = spec.partition(":")
        arm(moment, Path(run_dir), int(last_step), signal.Signals[f"SIG{name or 'KILL'}"])
    sys.exit(main(train_args))
