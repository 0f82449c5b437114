"""One training run from a configuration: decide the data and run directory on the main process, build
the trainer, train, test, and always tell the callbacks how it ended."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import yaml
from accelerate.utils import broadcast_object_list

from emotionnet.config import loader
from emotionnet.config.schema import TrainConfig
from emotionnet.data.source import resolve_data_dir
from emotionnet.exit_codes import ExitCode
from emotionnet.run_layout import RunLayout
from emotionnet.train.callbacks import TrainerCallback
from emotionnet.train.run_dir import resolve_run
from emotionnet.train.trainer import NonFiniteLossError, Trainer, build_accelerator

CallbackFactory = Callable[[TrainConfig], Sequence[TrainerCallback]]
Redactor = Callable[[dict], dict]


def run_training(
    cfg: TrainConfig, callbacks: CallbackFactory = lambda cfg: [], redact: Redactor = lambda tree: tree
) -> tuple[ExitCode, Trainer]:
    """Train and test as `cfg` says. Errors in the data or run directory raise (DataSourceError,
    RunDirError, ValueError) before anything is trained; a NaN/Inf loss raises NonFiniteLossError
    after the callbacks were told (exit NONFINITE)."""
    accelerator = build_accelerator(cfg)
    logging.basicConfig(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise
    # The main process decides (prep cache, run name, checkpoint); the others follow its answer.
    decided = [None]
    if accelerator.is_main_process:
        decided = [(str(resolve_data_dir(cfg.data)), resolve_run(cfg.run, accelerator))]
    data_dir, run = broadcast_object_list(decided)[0]
    accelerator.wait_for_everyone()

    cfg.data.data_dir = data_dir
    cfg.run.run_name = run.name
    if accelerator.is_main_process:
        run.path.mkdir(parents=True, exist_ok=True)
        resolved = redact(loader.to_dict(cfg))  # no credentials on disk (e.g. in tracking.uri)
        RunLayout(run.path).config.write_text(yaml.safe_dump(resolved, sort_keys=False))
    trainer = Trainer(cfg, accelerator, run.path, callbacks=callbacks(cfg))
    if run.checkpoint is not None:
        trainer.resume(run.checkpoint)
    code = ExitCode.FAILED  # anything that escapes below is a failure for the callbacks
    try:
        code = fit_and_test(trainer)
    except NonFiniteLossError:
        code = ExitCode.NONFINITE
        raise
    finally:
        trainer.end(code)
        accelerator.end_training()
    return code, trainer


def fit_and_test(trainer: Trainer) -> ExitCode:
    code = trainer.fit()
    if code == ExitCode.PREEMPTED:
        return code
    trainer.finish(trainer.cfg.run.eval_tta)
    return ExitCode.OK
