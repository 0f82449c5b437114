"""`Trainer`: a run's state (`TrainerProgress`), its `train_step` and the `fit` loop over it.

The parts it drives are made elsewhere: `components` (model, data, loss, optimizer, schedule, EMA),
`control.RunControl` (run length, time budget, stop and NaN/Inf agreement between ranks),
`checkpoint.CheckpointManager` (when and what to save, resume) and `RunEvaluator` (validation, and the
end-of-run evaluation the session asks for). Accelerate owns device placement, sharding, precision and
gradient sync (one CPU, DDP or DeepSpeed ZeRO-2/3).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from tqdm.auto import tqdm

from data_prep.files import recover_staged
from emotionnet.config.schema import TrainConfig
from emotionnet.evaluation.result import EvalResult
from emotionnet.evaluation.run_evaluator import RunEvaluator
from emotionnet.exit_codes import ExitCode
from emotionnet.run_layout import RunLayout
from emotionnet.train.callbacks import TrainerCallback
from emotionnet.train.checkpoint import CheckpointManager
from emotionnet.train.components import build_components, eval_loader, global_batch, schedule_steps
from emotionnet.train.control import RunControl
from emotionnet.train.environment import describe_environment
from emotionnet.train.exporter import ModelExporter
from emotionnet.train.loss_window import LossWindow
from emotionnet.train.metrics_log import MetricsLog
from emotionnet.train.optim import SkippedSteps, snapshot_steps
from emotionnet.train.progress import TrainerProgress, step_bar
from emotionnet.train.recorder import RunRecorder
from emotionnet.train.run_dir import forget_a_best_not_exported
from emotionnet.train.run_identity import run_identity

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        accelerator: Accelerator,
        run_dir: Path,
        callbacks: Sequence[TrainerCallback] = (),
    ):
        self.cfg = cfg
        self.accelerator = accelerator
        self.run_dir = run_dir
        self.layout = RunLayout(run_dir)
        self.progress = TrainerProgress()
        self.test_result: EvalResult | None = None  # best/ on the test split, at the run's end
        self.metrics_log = MetricsLog(self.layout.metrics)
        hostnames = gather_object([socket.gethostname()])  # collective: every rank builds a Trainer
        self.environment = describe_environment(accelerator, hostnames)
        self.recorder = RunRecorder(self, callbacks)
        # Audit trail of which rows each rank consumed (off by default: it writes on every step).
        self.sample_log = None
        if cfg.run.log_sample_ids:
            self.sample_log = MetricsLog(run_dir / "samples" / f"rank{accelerator.process_index}.jsonl")
            self.sample_log.path.parent.mkdir(parents=True, exist_ok=True)

        self.parts = build_components(cfg, accelerator)
        self.skips = SkippedSteps(accelerator.scaler, accelerator.device)
        # What this launch made of the configuration (environment.jsonl, MLflow params).
        self.resolved = {
            "optim.resolved_lr": str(self.parts.lr),
            "data.global_batch": str(global_batch(cfg, accelerator.num_processes)),
        }
        self.checkpoints = CheckpointManager(
            run_dir, accelerator, cfg.checkpoint.keep_last, cfg.checkpoint.every_steps
        )
        self.checkpoints.json_state["progress"] = self.progress
        self.checkpoints.json_state["identity"] = run_identity(cfg, self.splits)
        if self.parts.ema is not None:
            self.checkpoints.tensor_state["ema"] = self.parts.ema.averaged
        self.control = RunControl(
            cfg,
            accelerator,
            self.progress,
            self.parts.lr_schedule,
            self.parts.steps_per_epoch,
            len(self.splits["validation"]),
            last_checkpoint=self.checkpoints.latest,
        )
        self.exporter = ModelExporter(accelerator, self.parts, cfg.model)
        self.evaluator = RunEvaluator(
            accelerator,
            self.splits,
            self.parts.preprocessing,
            partial(eval_loader, cfg),
            {"validation": self.parts.val_loader},
        )
        self.snapshot_steps = snapshot_steps(
            cfg.schedule,
            self.parts.steps_per_epoch,
            self.control.total_steps,
            warn=accelerator.is_main_process,
        )

    @property
    def splits(self) -> dict:
        return self.parts.splits

    def resume(self, checkpoint: Path | None) -> None:
        """Restore a verified checkpoint (None: start fresh), drop the log records and exports of work the
        run will redo (or an earlier attempt's that never saved a checkpoint), and what a kill mid-export
        left behind."""
        p = self.progress
        if checkpoint is not None:
            self.checkpoints.load(checkpoint)
            self.control.restore_schedule_length(schedule_steps(self.cfg, self.parts.steps_per_epoch))
        if self.sample_log is not None:
            self.sample_log.truncate(p.step)
        if self.accelerator.is_main_process:
            dropped = self.metrics_log.truncate(p.step, p.logged_records)
            for parent in (self.run_dir, self.layout.snapshots):
                for done in recover_staged(parent):
                    log.warning("%s: %s (left by a run killed while exporting)", parent, done)
            if checkpoint is not None:
                log.info(
                    "resumed from %s at step %d (dropped %d later log records)", checkpoint, p.step, dropped
                )
        self.accelerator.wait_for_everyone()
        forget_a_best_not_exported(p, self.layout.best)

    # ---- the loop ------------------------------------------------------------------------------

    def fit(self) -> ExitCode:
        """Train to the end (OK) or until a stop signal (checkpoints, returns PREEMPTED)."""
        self.recorder.start(self.parts.preprocessing)
        p, control = self.progress, self.control
        window = LossWindow(self.accelerator.device)
        with step_bar(control.total_steps, p.step, self.accelerator.is_main_process) as bar:
            control.on_plan = lambda total_steps: setattr(bar, "total", total_steps)
            control.start()
            while not control.finished:
                epoch_finished = True
                for batch in self._epoch_batches():
                    loss, grad_norm, stepped = self.train_step(batch)
                    self._count_batch(batch, stepped)
                    window.add(loss, batch["labels"].numel(), grad_norm)
                    if not stepped:
                        continue
                    p.step += 1
                    bar.update(1)
                    control.after_step(loss)
                    stop = control.agree() if control.sync_due(self._work_due()) else False
                    if p.step % self.cfg.run.log_every_steps == 0:
                        self._log_train(window, bar)
                    if p.step in self.snapshot_steps:
                        self._save_snapshot()
                    if self.checkpoints.due(p.step):
                        self._save_checkpoint()
                    if stop:
                        return self._preempt()
                    if control.finished:
                        epoch_finished = self._epoch_consumed()
                        break
                if self._end_epoch(epoch_finished):
                    return self._preempt()
            # Resumed from the checkpoint written just before the last validation: validate now.
            if p.validated_step != p.step and self._end_epoch(self._epoch_consumed()):
                return self._preempt()
        return ExitCode.OK

    def train_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """One micro-batch: forward, backward, and (on the last micro-step) clip + optimizer step.

        Returns the loss, the pre-clip gradient norm (when clipped this step) and whether the
        optimizer stepped.
        """
        acc, parts = self.accelerator, self.parts
        images = parts.augment(batch["pixel_values"], batch.get("augment")).to(parts.input_dtype)
        if parts.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = batch["labels"]
        if parts.batch_mixing is not None:
            images, targets = parts.batch_mixing(images, targets)  # soft targets (B, K)
        grad_norm = None
        with acc.accumulate(parts.model):
            loss = parts.criterion(parts.model(images), targets)
            acc.backward(loss)
            if acc.sync_gradients:
                grad_norm = self._clip_gradients()
                self.skips.before_step()
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                self.skips.after_step(acc.optimizer_step_was_skipped)
                parts.scheduler.step()
                if parts.ema is not None:
                    parts.ema.update()
        return loss, grad_norm, acc.sync_gradients

    def _clip_gradients(self) -> torch.Tensor | float | None:
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed clips inside its step (config's gradient_clipping), which `backward` has run.
            return self.parts.model.get_global_grad_norm()
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        return self.accelerator.clip_grad_norm_(self.parts.model.parameters(), max_norm)

    def _epoch_batches(self) -> Iterable[dict]:
        """This epoch's batches (after a mid-epoch resume: those not yet consumed), the model in train mode."""
        loader, epoch = self.parts.train_loader, self.progress.epoch
        loader.set_epoch(epoch)  # shuffling order
        loader.dataset.set_epoch(epoch)  # per-sample augmentation seeds
        self.parts.model.train()
        skip = self.progress.batches_in_epoch
        return self.accelerator.skip_first_batches(loader, skip) if skip else loader

    def _count_batch(self, batch: dict, stepped: bool) -> None:
        p = self.progress
        if self.sample_log is not None:
            row_ids = batch["row_id"].tolist()
            self.sample_log.append(
                {
                    "step": p.step + int(stepped),
                    "epoch": p.epoch,
                    "batch": p.batches_in_epoch,
                    "row_ids": row_ids,
                }
            )
        p.batches_in_epoch += 1

    def _epoch_consumed(self) -> bool:
        return self.progress.batches_in_epoch >= len(self.parts.train_loader)

    def _work_due(self) -> bool:
        """This step logs or saves: a sync point (ranks agree before anything is written)."""
        step = self.progress.step
        return (
            step % self.cfg.run.log_every_steps == 0
            or self.checkpoints.due(step)
            or step in self.snapshot_steps
        )

    def _end_epoch(self, finished: bool) -> bool:
        """Validate, keep the best export, checkpoint; True when the ranks agreed to stop."""
        stop = self.control.agree()  # raises on NaN/Inf before anything is saved
        with self.control.epoch_end():
            self._validate()
            if finished:
                self.progress.epoch += 1
                self.progress.batches_in_epoch = 0
            self._save_checkpoint()
        return stop or self.control.agree()  # agreed: every rank takes the same branch

    def _validate(self) -> None:
        p = self.progress
        self.exporter.share_buffers()
        result = self.evaluator.model(self.parts.eval_model, "validation")
        self.recorder.report("validation", "validation", result)
        if self.accelerator.is_main_process:
            log.info(
                "epoch %d step %d: validation loss %.4f accuracy %.4f macro-F1 %.4f",
                p.epoch, p.step, result.loss, result.report.accuracy, result.report.macro_f1,
            )  # fmt: skip
        if result.report.accuracy > p.best_accuracy:
            p.best_accuracy, p.best_step = result.report.accuracy, p.step
            self.export(self.layout.best, {"step": p.step, "epoch": p.epoch, **result.metrics("validation")})
        p.validated_step = p.step

    def _save_snapshot(self) -> None:
        cycle = self.snapshot_steps.index(self.progress.step) + 1
        metadata = {"step": self.progress.step, "epoch": self.progress.epoch, "cycle": cycle}
        self.export(self.layout.snapshot(cycle), metadata)

    def _save_checkpoint(self) -> Path:
        self.control.record_budget()
        self.progress.skipped_steps += self.skips.take()
        self.progress.logged_records = self.metrics_log.count
        return self.checkpoints.save(self.progress.step, protect=self.progress.best_step)

    def _preempt(self) -> ExitCode:
        step = self.progress.step
        saved = self.checkpoints.last_saved_step == step
        path = self.checkpoints.path(step) if saved else self._save_checkpoint()
        if self.accelerator.is_main_process:
            log.warning(
                "stop signal received: checkpoint %s saved; exiting with code %d", path, ExitCode.PREEMPTED
            )
        return ExitCode.PREEMPTED

    # ---- logging, reports, exports --------------------------------------------------------------

    def _log_train(self, window: LossWindow, bar: tqdm) -> None:
        loss, images_per_s = window.flush(self.accelerator)
        lr = self.parts.scheduler.get_last_lr()[0]
        record = {"train/loss": loss, "train/lr": lr, "train/images_per_s": images_per_s}
        if window.grad_norm is not None:
            record["train/grad_norm"] = float(window.grad_norm)
        self.progress.skipped_steps += self.skips.take()
        if self.accelerator.mixed_precision == "fp16":
            record["train/skipped_steps"] = self.progress.skipped_steps
        self.recorder.log(record, split="train")
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}")

    def export(self, path: Path, metadata: dict) -> Path:
        return self.exporter.export(path, metadata)

    def export_final(self) -> Path:
        return self.export(self.layout.final, {"step": self.progress.step, "epoch": self.progress.epoch})
