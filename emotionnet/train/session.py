"""One training run from a configuration: decide the data and run directory on the main process (and lock
the run directory for the run's life), build the trainer, train, test, and always tell the callbacks how
it ended."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from emotionnet.config import loader
from emotionnet.config.schema import TrainConfig
from emotionnet.data.loaders import load_splits
from emotionnet.data.source import resolve_data_dir
from emotionnet.exit_codes import ExitCode
from emotionnet.run_layout import RunLayout
from emotionnet.train.callbacks import TrainerCallback
from emotionnet.train.components import build_accelerator
from emotionnet.train.control import NonFiniteLossError, stop_signals_for_the_run
from emotionnet.train.run_dir import (
    ResolvedRun,
    check_output_dir,
    refuse_links,
    resume_checkpoint,
    run_directory,
)
from emotionnet.train.run_lock import RunLock
from emotionnet.train.trainer import Trainer

CallbackFactory = Callable[[TrainConfig], Sequence[TrainerCallback]]
Redactor = Callable[[dict], dict]


def run_training(
    cfg: TrainConfig, callbacks: CallbackFactory = lambda cfg: [], redact: Redactor = lambda tree: tree
) -> tuple[ExitCode, Trainer]:
    """Train and test as `cfg` says. A mistake in the configuration, output, data or run directory or the
    checkpoint raises a UserError (ConfigError, DataSourceError, RunDirError, CheckpointError; RunBusyError
    when another live run holds the run directory) before anything is trained; a NaN/Inf loss raises
    NonFiniteLossError after the callbacks were told (exit NONFINITE)."""
    with stop_signals_for_the_run():
        return _run_training(cfg, callbacks, redact)


def _run_training(cfg: TrainConfig, callbacks: CallbackFactory, redact: Redactor) -> tuple[ExitCode, Trainer]:
    if cfg.run.num_threads is not None:
        torch.set_num_threads(cfg.run.num_threads)
    accelerator = build_accelerator(cfg)
    logging.basicConfig(
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise
    with ExitStack() as held:  # the run lock, released however the run ends (not on SIGKILL: it goes stale)
        # The main process decides (prep cache, run name, checkpoint); the others follow its answer, or
        # raise its error with it rather than wait for an answer that never comes.
        decided: list = [None]
        if accelerator.is_main_process:
            try:
                decided = [decide_run(cfg, accelerator, held)]
            except Exception as err:
                decided = [err]
        outcome = broadcast_object_list(decided)[0]
        if isinstance(outcome, Exception):
            raise outcome
        data_dir, run = outcome
        accelerator.wait_for_everyone()

        cfg.data.data_dir = data_dir
        cfg.run.run_name = run.name
        if accelerator.is_main_process:
            resolved = redact(loader.to_dict(cfg))  # no credentials on disk (e.g. in tracking.uri)
            RunLayout(run.path).config.write_text(yaml.safe_dump(resolved, sort_keys=False))
        trainer = Trainer(cfg, accelerator, run.path, callbacks=callbacks(cfg))
        code = ExitCode.FAILED  # anything that escapes below is a failure for the callbacks
        try:
            trainer.resume(run.checkpoint)
            code = fit_and_test(trainer)
        except NonFiniteLossError:
            code = ExitCode.NONFINITE
            raise
        finally:
            trainer.recorder.end(code)
            accelerator.end_training()
        return code, trainer


def decide_run(cfg: TrainConfig, accelerator: Accelerator, held: ExitStack) -> tuple[str, ResolvedRun]:
    """On the main process: check the output directory, prepare or find the data, pick and lock the run
    directory (the lock joins `held`), then pick the checkpoint to resume."""
    check_output_dir(cfg.run.output_dir)  # before the data prep or anything else writes
    data_dir = str(resolve_data_dir(cfg.data))
    if cfg.data.verify_hashes:  # once per run, here on the main process; every load checks the sizes
        load_splits(data_dir, verify_hashes=True)
    run_path = run_directory(cfg.run, accelerator)
    refuse_links(run_path)
    run_path.mkdir(parents=True, exist_ok=True)
    held.enter_context(RunLock(run_path))
    checkpoint = resume_checkpoint(cfg.run, run_path, accelerator.num_processes)
    return data_dir, ResolvedRun(run_path.name, run_path, checkpoint)


def fit_and_test(trainer: Trainer) -> ExitCode:
    """Train; at the end, export `final/` and evaluate the exports (snapshot ensemble, `best/` on test)."""
    code = trainer.fit()
    if code == ExitCode.PREEMPTED:
        return code
    trainer.export_final()
    trainer.test_result = trainer.evaluator.exports(
        trainer.layout, trainer.cfg.run.eval_tta, trainer.recorder.report
    )
    return ExitCode.OK
