"""Train EmotionNet. The same command runs on one process or under `accelerate launch`.

One process (CPU or one GPU):
    emotionnet-train --config configs/train/demo.yaml
    python -m emotionnet.train --config configs/train/fer2013.yaml optim.lr=3e-4
Several GPUs / DeepSpeed / several CPU processes:
    accelerate launch --config_file configs/accelerate/ddp.yaml -m emotionnet.train --config ...
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m emotionnet.train --config ...
The seed project's flags still work:
    python -m emotionnet.train --csv_file fer2013.csv --batch_size 8 --num_epochs 30 --lr 1e-4

Exit codes: 0 done; 2 bad configuration or data; 3 the loss became NaN/Inf; 75 stopped by
SIGTERM/SIGUSR1 after saving a checkpoint (requeue and pass `--resume latest`).
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml
from accelerate.utils import broadcast_object_list

from emotionnet import config_loader
from emotionnet.callbacks import TrainerCallback
from emotionnet.config import TrainConfig
from emotionnet.dataset_source import DataSourceError, resolve_data_dir
from emotionnet.redact import redact_tree
from emotionnet.run_dir import RunDirError, resolve_run
from emotionnet.tracking import build_trackers
from emotionnet.trainer import EXIT_PREEMPTED, NonFiniteLossError, Trainer, build_accelerator

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3

# The seed command's flags and the config keys they set.
LEGACY_FLAGS = {
    "csv_file": ("data.csv_file", str),
    "data_dir": ("data.data_dir", str),
    "batch_size": ("data.batch_size", int),
    "num_epochs": ("run.num_epochs", int),
    "lr": ("optim.lr", float),
    "weight_decay": ("optim.weight_decay", float),
    "num_workers": ("data.num_workers", int),
    "output_dir": ("run.output_dir", str),
    "mixed_precision": ("run.mixed_precision", str),
    "seed": ("run.seed", int),
}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="emotionnet-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file in configs/train/ (defaults are the dataclass defaults)")
    parser.add_argument(
        "--resume", help="'latest' (of --run_name, or the newest run) or a checkpoint directory"
    )
    parser.add_argument("--run_name", help="run directory name under the output dir")
    for flag, (key, kind) in LEGACY_FLAGS.items():
        parser.add_argument(f"--{flag}", type=kind, help=f"same as {key}=...")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    overrides = [
        f"{key}={getattr(args, flag)}"
        for flag, (key, _) in LEGACY_FLAGS.items()
        if getattr(args, flag) is not None
    ]
    if args.resume:
        overrides.append(f"run.resume={args.resume}")
    if args.run_name:
        overrides.append(f"run.run_name={args.run_name}")
    return args, overrides + args.overrides


def main(argv: list[str] | None = None) -> int:
    return run(argv)[0]


def run(argv: list[str] | None = None) -> tuple[int, Trainer | None]:
    """Parse, train, evaluate; returns the exit code and the trainer (for scripts that inspect it)."""
    args, overrides = parse_args(argv)
    try:
        cfg = config_loader.load(TrainConfig, args.config, overrides)
    except config_loader.ConfigError as err:
        print(f"emotionnet-train: configuration error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT, None

    accelerator = build_accelerator(cfg)
    logging.basicConfig(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise
    try:
        # The main process decides (prep cache, run name, checkpoint); the others follow its answer.
        decided = [None]
        if accelerator.is_main_process:
            data_dir = resolve_data_dir(cfg.data)
            run = resolve_run(cfg.run, accelerator)
            decided = [(str(data_dir), run)]
        decided = broadcast_object_list(decided)
        data_dir, run = decided[0]
        accelerator.wait_for_everyone()
    except (DataSourceError, RunDirError) as err:
        print(f"emotionnet-train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT, None

    cfg.data.data_dir = data_dir
    cfg.run.run_name = run.name
    if accelerator.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        resolved = redact_tree(config_loader.to_dict(cfg))  # no credentials on disk (e.g. in tracking.uri)
        (run.path / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    try:
        trainer = Trainer(cfg, accelerator, run.path, callbacks=build_callbacks(cfg))
    except (ValueError, FileNotFoundError) as err:
        print(f"emotionnet-train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT, None
    if run.checkpoint is not None:
        trainer.resume(run.checkpoint)
    code = 1  # anything that escapes below is a failure for the callbacks
    try:
        code = train_and_test(trainer)
    except NonFiniteLossError as err:
        print(f"emotionnet-train: {err}", file=sys.stderr)
        code = EXIT_NONFINITE
    finally:
        trainer.end(code)
    accelerator.end_training()
    return code, trainer


def build_callbacks(cfg: TrainConfig) -> list[TrainerCallback]:
    """Trackers and other observers of the run (main process only)."""
    return build_trackers(cfg)


def train_and_test(trainer: Trainer) -> int:
    code = trainer.fit()
    if code == EXIT_PREEMPTED:
        return code
    result = trainer.finish(trainer.cfg.run.eval_tta)
    if trainer.accelerator.is_main_process:
        p = trainer.progress
        print(f"run directory: {trainer.run_dir}")
        print(f"best validation accuracy {p.best_accuracy:.4f} at step {p.best_step}")
        if result is not None:
            print(
                f"test ({trainer.cfg.run.eval_tta} TTA) accuracy {result.report.accuracy:.4f} "
                f"macro-F1 {result.report.macro_f1:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
