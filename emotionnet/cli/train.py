"""Train EmotionNet. The same command runs on one process or under `accelerate launch`.

One process (CPU or one GPU):
    emotionnet-train --config demo
    python -m emotionnet.cli.train --config fer2013 optim.lr=3e-4
Several GPUs / DeepSpeed / several CPU processes (or let `emotionnet-launch` write these commands):
    accelerate launch --config_file configs/accelerate/ddp.yaml -m emotionnet.cli.train --config fer2013
    accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml -m emotionnet.cli.train --config demo
The seed project's flags still work:
    python -m emotionnet.cli.train --csv_file fer2013.csv --batch_size 8 --num_epochs 30 --lr 1e-4
"""

from __future__ import annotations

import sys

from emotionnet.cli import report_user_error
from emotionnet.config.args import parse_train_args
from emotionnet.config.recipes import load_train_config, recipe_names
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode
from emotionnet.tracking.mlflow_tracker import build_trackers, local_store_uri, resolve_tracking_uri
from emotionnet.tracking.redact import redact_tree
from emotionnet.train.control import StopDuringStartUp
from emotionnet.train.session import run_training
from emotionnet.train.trainer import Trainer

PROG = "emotionnet-train"


def main(argv: list[str] | None = None) -> int:
    return run(argv)[0]


def run(argv: list[str] | None = None) -> tuple[ExitCode, Trainer | None]:
    """Parse, train and test; returns the exit code and the trainer (for scripts and tests that inspect it).

    A user error (configuration, data, run directory, busy run, tracking store, NaN/Inf loss) is one line on
    stderr and its exit code; anything else propagates with its traceback (exit 1)."""
    args, overrides = parse_train_args(argv, description=__doc__)
    if args.list_recipes:
        print("\n".join(recipe_names()))
        return ExitCode.OK, None
    try:
        cfg = load_train_config(args.config, overrides)
        code, trainer = run_training(cfg, callbacks=build_trackers, redact=redact_tree)
    except UserError as err:
        return report_user_error(PROG, err), None
    except StopDuringStartUp as stop:
        print(f"{PROG}: {stop}; nothing to save: run the command again", file=sys.stderr)
        return ExitCode.PREEMPTED, None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED, None
    if code == ExitCode.OK and trainer.accelerator.is_main_process:
        print(closing_summary(trainer))
    return code, trainer


def closing_summary(trainer: Trainer) -> str:
    """Where the run is, how good it got, and the commands to look at it and use it."""
    layout, p, cfg = trainer.layout, trainer.progress, trainer.cfg
    lines = [
        f"run directory: {layout.root}",
        f"best validation accuracy {p.best_accuracy:.4f} at step {p.best_step} (model: {layout.best})",
    ]
    if (test := trainer.test_result) is not None:
        lines.append(
            f"test ({cfg.run.eval_tta} TTA) accuracy {test.report.accuracy:.4f} macro-F1 {test.report.macro_f1:.4f}"
        )
    lines.append("next:")
    # Compared by URI: MLflow exports the store it opened as MLFLOW_TRACKING_URI, so the environment now
    # names the local store too.
    store = resolve_tracking_uri(cfg.tracking, cfg.run.output_dir)[0]
    if cfg.tracking.enabled and store == local_store_uri(cfg.run.output_dir):
        lines.append(f"  emotionnet-mlflow-ui {cfg.run.output_dir}          # browse the run in MLflow")
    lines.append(f"  emotionnet-eval {layout.best} {cfg.data.data_dir} --tta tencrop   # evaluate")
    lines.append(f"  emotionnet-predict --model {layout.best} photo.jpg   # classify the faces in a photo")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
