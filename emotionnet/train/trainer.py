"""The training loop: a checkpointable `Trainer` over Accelerate (one CPU, DDP or DeepSpeed ZeRO-2/3).

Accelerate owns device placement, sharding, precision and gradient sync; this module states the
training logic once. Everything a restart needs is either in `accelerator.save_state` (model,
optimizer, scheduler, scaler, RNG states) or kept by the `CheckpointManager` beside it (`TrainerProgress`
as JSON, the EMA weights as safetensors).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    InitProcessGroupKwargs,
    TorchDynamoPlugin,
    gather_object,
    set_seed,
)
from tqdm.auto import tqdm

from data_prep.schema import CLASS_NAMES
from emotionnet.config.schema import TrainConfig
from emotionnet.data.augment import AUGMENT_GRID_NAME, AugmentSampler, BatchAugment, write_augment_grid
from emotionnet.data.loaders import class_counts, create_loader, load_splits
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import TTAMode, build_batch_mixing
from emotionnet.evaluation.metrics import ClassificationReport, confusion_matrix
from emotionnet.evaluation.reports import (
    evaluation_report_name,
    write_evaluation_report,
    write_training_curves,
)
from emotionnet.evaluation.result import EvalResult
from emotionnet.exit_codes import ExitCode
from emotionnet.inference.ensemble import ProbabilityAverage, tta_probabilities
from emotionnet.inference.export import load_export, save_export
from emotionnet.model.emotionnet import create_model
from emotionnet.run_layout import RunLayout
from emotionnet.train.budget import EVAL_COST_PER_IMAGE, Pace, TimeBudget
from emotionnet.train.callbacks import TrainerCallback
from emotionnet.train.checkpoint import CheckpointManager
from emotionnet.train.ema import WeightEMA
from emotionnet.train.environment import describe_environment
from emotionnet.train.loss import Criterion
from emotionnet.train.metrics_log import MetricsLog
from emotionnet.train.optim import create_optimizer, create_scheduler, cycle_end_steps
from emotionnet.train.progress import TrainerProgress

log = logging.getLogger(__name__)

# Ranks agree on stop requests and non-finite losses at sync points: a host sync and a collective, so not
# on every step but about every AGREE_EVERY_S seconds of training (a number of steps every rank derives
# from the same reduced step time), and at every log, snapshot and checkpoint step. One process acts on a
# stop request at the next step.
AGREE_EVERY_S = 1.0
# A time-budgeted run times its pace over the last three quarters of the warm-up (at least this many steps).
MIN_CALIBRATION_STEPS = 20


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


class StopRequest:
    """SIGTERM / SIGUSR1 set a flag; the loop acts on it at the next step (one process) or the next sync
    point (several: within about AGREE_EVERY_S seconds)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    mixed_precision = (
        None if cfg.run.mixed_precision is None else cfg.run.mixed_precision.replace("off", "no")
    )
    # Several processes and no GPU: gloo, or Accelerate would run each DeepSpeed process alone and
    # treat torchrun-launched CPU processes as undistributed (no gradient sync). `cpu=True` selects
    # MULTI_CPU (DDP over gloo) but would also switch DeepSpeed off, so DeepSpeed keeps cpu=False.
    cpu_multiprocess = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    uses_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return Accelerator(
        cpu=cpu_multiprocess and not uses_deepspeed,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum_steps,
        kwargs_handlers=[
            InitProcessGroupKwargs(
                backend="gloo" if cpu_multiprocess else None,
                timeout=timedelta(seconds=cfg.run.dist_timeout_s),
            )
        ],
        # A seeded sampler makes the epoch's order a function of (seed, epoch): exact mid-epoch resume.
        # non_blocking: batches are copied to the GPU asynchronously from pinned memory (data.pin_memory).
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=cfg.run.seed, non_blocking=True
        ),
        step_scheduler_with_optimizer=False,
        # None: whatever `accelerate launch` was configured with (no compilation unless it says so).
        dynamo_plugin=TorchDynamoPlugin(backend=cfg.run.compile_backend, mode=cfg.run.compile_mode)
        if cfg.run.compile
        else None,
    )


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        accelerator: Accelerator,
        run_dir: Path,
        callbacks: Sequence[TrainerCallback] = (),
    ):
        self.cfg = cfg
        self.callbacks = list(callbacks) if accelerator.is_main_process else []
        self.accelerator = accelerator
        self.run_dir = run_dir
        self.layout = RunLayout(run_dir)
        self.progress = TrainerProgress()
        self.test_result: EvalResult | None = None  # best/ on the test split, set by finish()
        self.metrics_log = MetricsLog(self.layout.metrics)
        self.checkpoints = CheckpointManager(run_dir, accelerator, cfg.checkpoint.keep_last)
        self.preprocessing = Preprocessing(input_size=cfg.model.input_size)
        self.stop = StopRequest()
        self._last_checkpoint_step = -1
        hostnames = gather_object([socket.gethostname()])  # collective: every rank builds a Trainer
        self.environment = describe_environment(accelerator, self.distributed_label(), hostnames)
        # Audit trail of which rows each rank consumed (off by default: it writes on every step).
        self.sample_log = (
            MetricsLog(run_dir / "samples" / f"rank{accelerator.process_index}.jsonl")
            if cfg.run.log_sample_ids
            else None
        )
        if self.sample_log is not None:
            self.sample_log.path.parent.mkdir(parents=True, exist_ok=True)

        # Same initial weights on every rank, then per-rank streams for augmentation and dropout.
        set_seed(cfg.run.seed, deterministic=cfg.run.deterministic)
        model = create_model(cfg.model)
        set_seed(cfg.run.seed, device_specific=True)
        # DeepSpeed flattens and broadcasts parameters as contiguous bytes: NHWC conv weights are refused.
        self.channels_last = (
            cfg.run.channels_last and accelerator.distributed_type != DistributedType.DEEPSPEED
        )
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.mixed_precision != "no":
            # DeepSpeed trains in bf16/fp16 weights. ZeRO-2 casts the whole module, ZeRO-3 only the
            # parameters: cast buffers (BatchNorm statistics) too, or CPU batch_norm rejects the mix.
            model = model.to(torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float16)

        splits = load_splits(cfg.data.data_dir)
        if "train" not in splits or "validation" not in splits:
            raise ValueError(
                f"{cfg.data.data_dir} needs a 'train' and a 'validation' split; it has {list(splits)}"
            )
        self.splits = splits
        # Workers read uint8 faces and draw each face's augmentation; train_step applies it on the device.
        self.augment = BatchAugment(cfg.augment, self.preprocessing)
        sampler = None
        if self.augment.enabled:
            sampler = AugmentSampler(cfg.augment, self.preprocessing, cfg.run.seed)
        train_loader = create_loader(
            splits["train"],
            cfg.data.batch_size,
            shuffle=True,
            drop_last=True,
            cfg=cfg.data,
            seed=cfg.run.seed,
            augment=sampler,
        )
        val_loader = self._eval_loader(splits["validation"])
        self.criterion = Criterion(cfg.loss, class_counts(splits["train"]), accelerator.device)

        # DeepSpeed on a CPU keeps the per-tensor loop (fused kernels untried under its ZeRO partitions).
        fused = cfg.optim.fused and (
            accelerator.device.type == "cuda" or accelerator.distributed_type != DistributedType.DEEPSPEED
        )
        optimizer = create_optimizer(model, cfg.optim, fused=fused)
        steps_per_epoch = len(train_loader) // (accelerator.num_processes * cfg.optim.grad_accum_steps)
        if steps_per_epoch == 0:
            raise ValueError(
                f"the training split ({len(splits['train'])} rows) is smaller than one global batch "
                f"({cfg.data.batch_size} x {accelerator.num_processes} processes x {cfg.optim.grad_accum_steps})"
            )
        schedule_steps = self._schedule_steps(steps_per_epoch)
        scheduler = create_scheduler(optimizer, cfg.schedule, steps_per_epoch, schedule_steps)
        self.lr_schedule = scheduler.lr_lambdas[0]
        self._configure_deepspeed()
        self.model, self.optimizer, self.train_loader, self.val_loader, self.scheduler = accelerator.prepare(
            model, optimizer, train_loader, val_loader, scheduler
        )
        self.checkpoints.json_state["progress"] = self.progress
        self.steps_per_epoch = len(self.train_loader) // cfg.optim.grad_accum_steps
        # run.max_steps stops the run early without reshaping its schedule.
        self.total_steps = min(schedule_steps or math.inf, cfg.run.max_steps or math.inf)
        self.calibration_step = max(cfg.schedule.warmup_steps, MIN_CALIBRATION_STEPS)
        self.budget = (
            TimeBudget(cfg.run.time_budget_min, self.steps_per_epoch) if cfg.run.time_budget_min else None
        )
        self.ema = self._build_ema()
        self.batch_mixing = build_batch_mixing(cfg.augment, cfg.model.num_classes)
        self.snapshot_steps = self._snapshot_steps()
        # DeepSpeed keeps bf16/fp16 weights: inputs must match them. Otherwise autocast handles precision.
        self.input_dtype = (
            next(self.model.parameters()).dtype
            if accelerator.distributed_type == DistributedType.DEEPSPEED
            else torch.float32
        )

    # ---- setup helpers -------------------------------------------------------------------------

    def _eval_loader(self, split) -> torch.utils.data.DataLoader:
        return create_loader(
            split,
            self.cfg.data.eval_batch_size,
            shuffle=False,
            drop_last=False,
            cfg=self.cfg.data,
            seed=self.cfg.run.seed,
        )

    def _build_ema(self) -> WeightEMA | None:
        if self.cfg.optim.ema_decay == 0:
            return None
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError(
                "optim.ema_decay is not supported with DeepSpeed (ZeRO shards the weights it would "
                "average); use DDP or set optim.ema_decay=0"
            )
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        ema = WeightEMA(model, self.cfg.optim.ema_decay)
        self.checkpoints.tensor_state["ema"] = ema.averaged
        return ema

    def _snapshot_steps(self) -> list[int]:
        if not self.cfg.schedule.snapshot_ensemble:
            return []
        steps = cycle_end_steps(self.cfg.schedule, self.steps_per_epoch, self.total_steps)
        if not steps and self.accelerator.is_main_process:
            log.warning(
                "schedule.snapshot_ensemble is on but no cosine cycle ends within the run's %d steps "
                "(warm-up %d + cycle_epochs %s x %d steps): no snapshots will be kept",
                self.total_steps,
                self.cfg.schedule.warmup_steps,
                self.cfg.schedule.cycle_epochs,
                self.steps_per_epoch,
            )
        return steps

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation, exports and snapshots use: the EMA weights when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _configure_deepspeed(self) -> None:
        """Fill the DeepSpeed JSON's `auto` clipping value from the training config."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.deepspeed_config.get("gradient_clipping", "auto") == "auto":
            plugin.deepspeed_config["gradient_clipping"] = self.cfg.optim.grad_clip

    def distributed_label(self) -> str:
        """'cpu', 'ddp', 'deepspeed-zero2', ... for run names and tags."""
        state = self.accelerator.state
        if state.distributed_type == DistributedType.DEEPSPEED:
            return f"deepspeed-zero{state.deepspeed_plugin.zero_stage}"
        if state.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
            return "ddp"
        return "single"

    # ---- resume --------------------------------------------------------------------------------

    def resume(self, checkpoint: Path | None) -> None:
        """Restore a verified checkpoint (None: start fresh), then drop the log records past its step: work
        the run will redo, or an earlier attempt's that never saved a checkpoint."""
        if checkpoint is not None:
            self.checkpoints.load(checkpoint)
            self._restore_schedule_length()
        if self.sample_log is not None:
            self.sample_log.truncate_after(self.progress.step)
        if self.accelerator.is_main_process:
            dropped = self.metrics_log.truncate_after(self.progress.step)
            if checkpoint is not None:
                log.info(
                    "resumed from %s at step %d (dropped %d later log records)",
                    checkpoint,
                    self.progress.step,
                    dropped,
                )

    def _schedule_steps(self, steps_per_epoch: int) -> int | None:
        """The run's length, where its cosine ends: schedule.budget_steps or run.num_epochs; None for a
        time-budgeted run, which fixes it after the warm-up (_calibrate_budget)."""
        if self.cfg.run.time_budget_min is not None:
            return None
        return self.cfg.schedule.budget_steps or steps_per_epoch * self.cfg.run.num_epochs

    def _restore_schedule_length(self) -> None:
        """After a resume: a time-budgeted run keeps its last planned step count (so the resumed run
        continues the same curve) until its next sync point re-plans it with the budget it has left; any
        other run takes this launch's budget_steps / num_epochs."""
        if self.cfg.run.time_budget_min is None:
            self.lr_schedule.total_steps = self._schedule_steps(self.steps_per_epoch)
        elif self.lr_schedule.total_steps is not None:
            self.total_steps = min(self.lr_schedule.total_steps, self.cfg.run.max_steps or math.inf)

    def _calibrate_budget(self) -> None:
        """Time-budgeted runs before their first plan: time the warm-up's steps (from a quarter of the way
        in: the first steps are slower), then plan the run's length."""
        if self.progress.step == self.calibration_step // 4:
            self.budget.restart_window(self.progress.step)
        if self.progress.step >= self.calibration_step:
            pace = self.accelerator.reduce(self._budget_pace(), reduction="max").tolist()
            self._plan_budget(Pace(*pace))
            self.budget.restart_window(self.progress.step)

    def _budget_pace(self) -> torch.Tensor:
        """This rank's pace figures (`budget.Pace`), to be reduced to the slowest rank's."""
        global_batch = (
            self.cfg.data.batch_size * self.accelerator.num_processes * self.cfg.optim.grad_accum_steps
        )
        validation_steps = len(self.splits["validation"]) / global_batch
        pace = self.budget.pace(self.progress.step, epoch_end_in_steps=EVAL_COST_PER_IMAGE * validation_steps)
        return torch.tensor(pace.as_list(), device=self.accelerator.device)

    def _plan_budget(self, pace: Pace) -> None:
        """Plan how many steps fit in the time budget; every rank plans from the same reduced pace, so all
        plan the same count. It is saved with the schedule in every checkpoint."""
        first_plan = self.lr_schedule.total_steps is None
        total = self.budget.plan(self.progress.step, pace)
        self.lr_schedule.total_steps = total
        self.total_steps = min(total, self.cfg.run.max_steps or math.inf)
        self._bar.total = self.total_steps
        if first_plan and self.accelerator.is_main_process:
            log.info(
                "time budget %.1f min: %.3f s/step, %.0f s per epoch end -> %d steps (%.1f epochs), "
                "re-planned at every sync point",
                self.cfg.run.time_budget_min,
                pace.seconds_per_step,
                pace.epoch_end_s,
                total,
                total / self.steps_per_epoch,
            )

    # ---- the loop ------------------------------------------------------------------------------

    def fit(self) -> ExitCode:
        """Train to the end (OK) or until a stop signal (checkpoints, returns PREEMPTED)."""
        bar = tqdm(
            total=self.total_steps if self.total_steps < math.inf else None,
            initial=self.progress.step,
            disable=not self.accelerator.is_main_process,
            desc="train",
            dynamic_ncols=True,
            unit="step",
        )
        try:
            self._bar = bar
            return self._fit(bar)
        finally:
            bar.close()  # before any error message, so it starts on a line of its own

    def _fit(self, bar: tqdm) -> ExitCode:
        acc, cfg, p = self.accelerator, self.cfg, self.progress
        if acc.is_main_process:  # before on_start, which mirrors both to the tracker
            MetricsLog(self.layout.environment).append(
                {"time": time.time(), "step": p.step, **self.environment}
            )
            path = self.layout.reports / AUGMENT_GRID_NAME
            write_augment_grid(path, cfg.augment, self.preprocessing, cfg.run.seed, self.splits["train"])
        for callback in self.callbacks:
            callback.on_start(self)
        window = _Window(acc.device)
        clock = _SyncClock(p.step)
        if self.budget is not None:
            self.budget.start(p.step, p.budget_spent_s)
        nonfinite_at = torch.full((), -1, dtype=torch.long, device=acc.device)
        device_step = torch.full((), p.step, dtype=torch.long, device=acc.device)  # no host copy per step
        while p.step < self.total_steps:
            self.train_loader.set_epoch(p.epoch)  # shuffling order
            self.train_loader.dataset.set_epoch(p.epoch)  # per-sample augmentation seeds
            loader = self.train_loader
            if p.batches_in_epoch:
                loader = acc.skip_first_batches(self.train_loader, p.batches_in_epoch)
            self.model.train()
            epoch_finished = True
            for batch in loader:
                loss, grad_norm, stepped = self.train_step(batch)
                if self.sample_log is not None:
                    self.sample_log.append(
                        {
                            "step": p.step + int(stepped),
                            "epoch": p.epoch,
                            "batch": p.batches_in_epoch,
                            "row_ids": batch["row_id"].tolist(),
                        }
                    )
                p.batches_in_epoch += 1
                window.add(loss.detach(), batch["labels"].numel())
                if not stepped:
                    continue
                p.step += 1
                bar.update(1)
                if self.budget is not None and self.lr_schedule.total_steps is None:
                    self._calibrate_budget()
                device_step += 1
                nonfinite_at = torch.where(
                    ~torch.isfinite(loss.detach()) & (nonfinite_at < 0), device_step, nonfinite_at
                )
                if grad_norm is not None:
                    window.grad_norm = grad_norm
                stop = False
                sync_point = (
                    clock.due(p.step)
                    or p.step % cfg.run.log_every_steps == 0
                    or p.step % cfg.checkpoint.every_steps == 0
                    or p.step in self.snapshot_steps
                )
                if sync_point or (acc.num_processes == 1 and self.stop.requested):
                    stop = self._agree(nonfinite_at, clock)  # raises on NaN/Inf before anything is saved
                if p.step % cfg.run.log_every_steps == 0:
                    self._log_train(window, bar)
                if p.step in self.snapshot_steps:
                    self._save_snapshot()
                if p.step % cfg.checkpoint.every_steps == 0:
                    self._save_checkpoint()
                if stop:
                    return self._preempt()
                if p.step >= self.total_steps:
                    epoch_finished = p.batches_in_epoch >= len(self.train_loader)
                    break
            stop = self._agree(nonfinite_at, clock)
            if self.budget is not None:
                self.budget.pause(p.step)
            self._end_of_epoch()
            if epoch_finished:
                p.epoch += 1
                p.batches_in_epoch = 0
            self._save_checkpoint()
            if self.budget is not None:
                self.budget.resume(p.step)
            if stop or self._agree(nonfinite_at, clock):  # `stop` is agreed: all ranks take the same branch
                return self._preempt()
        return ExitCode.OK

    def finish(self, tta: TTAMode) -> EvalResult | None:
        """Export `final/`; evaluate the snapshot ensemble, and `best/` on the test split when there is one."""
        self.export(self.layout.final, {"step": self.progress.step, "epoch": self.progress.epoch})
        snapshots = self.layout.snapshot_dirs()
        if snapshots:
            ensemble = ProbabilityAverage([load_export(d, self.accelerator.device)[0] for d in snapshots])
            self._evaluate_and_log(ensemble, "validation", "snapshots_validation", tta)
            if "test" in self.splits:
                self._evaluate_and_log(ensemble, "test", "snapshots_test", tta)
        if "test" not in self.splits:
            return None
        model, _ = load_export(self.layout.best, device=self.accelerator.device)
        self.test_result = self._evaluate_and_log(model, "test", "test", tta)
        return self.test_result

    def _evaluate_and_log(self, model: torch.nn.Module, split: str, name: str, tta: TTAMode) -> EvalResult:
        loader = self.accelerator.prepare_data_loader(self._eval_loader(self.splits[split]))
        result = self.evaluate(model, loader, tta=tta)
        self._report(name, split, result)
        return result

    def _save_snapshot(self) -> None:
        cycle = self.snapshot_steps.index(self.progress.step) + 1
        metadata = {"step": self.progress.step, "epoch": self.progress.epoch, "cycle": cycle}
        self.export(self.layout.snapshot(cycle), metadata)

    def train_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """One micro-batch: forward, backward, and (on the last micro-step) clip + optimizer step.

        Returns the loss, the pre-clip gradient norm (when clipped this step) and whether the
        optimizer stepped.
        """
        acc = self.accelerator
        images = self.augment(batch["pixel_values"], batch.get("augment")).to(self.input_dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = batch["labels"]
        if self.batch_mixing is not None:
            images, targets = self.batch_mixing(images, targets)  # soft targets (B, K)
        grad_norm = None
        with acc.accumulate(self.model):
            logits = self.model(images)
            loss = self.criterion(logits, targets)
            acc.backward(loss)
            if acc.sync_gradients:
                grad_norm = self._clip_gradients()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                if acc.optimizer_step_was_skipped:
                    self.progress.skipped_steps += 1
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update()
        return loss, grad_norm, acc.sync_gradients

    def _clip_gradients(self) -> torch.Tensor | None:
        acc = self.accelerator
        if acc.distributed_type == DistributedType.DEEPSPEED:
            return None  # DeepSpeed clips inside its step (config's gradient_clipping)
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        return acc.clip_grad_norm_(self.model.parameters(), max_norm)

    def _agree(self, nonfinite_at: torch.Tensor, clock: _SyncClock) -> bool:
        """One collective: raise NonFiniteLossError if any rank saw a NaN/Inf loss; True if any rank got a
        stop signal (all ranks stop together). Schedules the next sync point from the slowest rank, and
        re-plans a time-budgeted run from the slowest rank's pace."""
        device = self.accelerator.device
        local = [
            nonfinite_at.float(),
            torch.tensor(float(self.stop.requested), device=device),
            torch.tensor(float(clock.microseconds_per_step(self.progress.step)), device=device),
        ]
        replan = self.budget is not None and self.lr_schedule.total_steps is not None
        if replan:
            local += list(self._budget_pace())
        first, stop, microseconds_per_step, *pace = self.accelerator.reduce(
            torch.stack(local), reduction="max"
        ).tolist()
        clock.schedule(self.progress.step, int(microseconds_per_step))
        if first >= 0:
            last_good = self.checkpoints.latest()
            raise NonFiniteLossError(
                f"loss became NaN/Inf at step {int(first)}; last good checkpoint: {last_good or 'none saved yet'}"
            )
        if replan and self.progress.step < self.total_steps:
            self._plan_budget(Pace(*pace))
        return stop > 0

    def _save_checkpoint(self) -> Path:
        self._last_checkpoint_step = self.progress.step
        if self.budget is not None:
            self.progress.budget_spent_s = self.budget.spent_s()
        return self.checkpoints.save(self.progress.step, protect=self.progress.best_step)

    def _preempt(self) -> ExitCode:
        if self._last_checkpoint_step == self.progress.step:
            path = self.checkpoints.path(self.progress.step)
        else:
            path = self._save_checkpoint()
        if self.accelerator.is_main_process:
            log.warning(
                "stop signal received: checkpoint %s saved; exiting with code %d", path, ExitCode.PREEMPTED
            )
        return ExitCode.PREEMPTED

    def _log_train(self, window: _Window, bar: tqdm) -> None:
        loss, images_per_s = window.flush(self.accelerator)
        record = {
            "train/loss": loss,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/images_per_s": images_per_s,
        }
        if window.grad_norm is not None:
            record["train/grad_norm"] = float(window.grad_norm)
        if self.accelerator.mixed_precision == "fp16":
            record["train/skipped_steps"] = self.progress.skipped_steps
        self.log(record, split="train")
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{record['train/lr']:.2e}", img_s=f"{images_per_s:.0f}")

    def _end_of_epoch(self) -> None:
        p = self.progress
        result = self.evaluate(self.eval_model, self.val_loader)
        self._report("validation", "validation", result)
        if self.accelerator.is_main_process:
            log.info(
                "epoch %d step %d: validation loss %.4f accuracy %.4f macro-F1 %.4f",
                p.epoch,
                p.step,
                result.loss,
                result.report.accuracy,
                result.report.macro_f1,
            )
        if result.report.accuracy > p.best_accuracy:
            p.best_accuracy, p.best_step = result.report.accuracy, p.step
            self.export(self.layout.best, {"step": p.step, "epoch": p.epoch, **result.metrics("validation")})

    # ---- evaluation, export, logging -------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, loader, tta: TTAMode = "none") -> EvalResult:
        """Loss and metrics over a prepared loader, each sample counted once across processes."""
        acc = self.accelerator
        was_training = model.training
        model.eval()
        losses, probs, labels, row_ids = [], [], [], []
        input_dtype = next(model.parameters()).dtype
        for batch in tqdm(loader, desc="eval", leave=False, disable=not acc.is_main_process):
            images = self.preprocessing(batch["pixel_values"]).to(input_dtype)
            with acc.autocast():
                prob = tta_probabilities(model, images, tta, self.preprocessing)
            loss = F.nll_loss(prob.clamp(min=1e-12).log(), batch["labels"], reduction="none")
            gathered = acc.gather_for_metrics((loss, prob, batch["labels"], batch["row_id"]))
            for store, value in zip((losses, probs, labels, row_ids), gathered, strict=True):
                store.append(value.cpu())
        model.train(was_training)
        labels_t = torch.cat(labels)
        probs_t = torch.cat(probs)
        report = ClassificationReport(confusion_matrix(labels_t, probs_t.argmax(-1), len(CLASS_NAMES)))
        return EvalResult(report, float(torch.cat(losses).mean()), probs_t, labels_t, torch.cat(row_ids))

    def _report(self, name: str, split: str, result: EvalResult) -> None:
        """Log an evaluation's metrics and write its report files (the run's own copy, whatever tracks it)."""
        self.log(result.metrics(name), split=name)
        if not self.accelerator.is_main_process:
            return
        p = self.progress
        directory = write_evaluation_report(
            self.layout.reports / evaluation_report_name(name, p.epoch),
            result,
            self.splits.get(split),
            title=f"{name} · epoch {p.epoch} · step {p.step}",
            misclassified_max=self.cfg.tracking.misclassified_max,
        )
        for callback in self.callbacks:
            callback.on_evaluation(self, name, result, directory)

    def export(self, path: Path, metadata: dict) -> Path:
        """Write an export to `path` (safetensors + description); gathers ZeRO-3 shards on all ranks."""
        if self.ema is not None:
            state = self.ema.module.state_dict()
        else:
            state = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
            save_export(path, state, self.cfg.model, self.preprocessing, metadata)
        self.accelerator.wait_for_everyone()
        return path

    def end(self, exit_code: int) -> None:
        if self.accelerator.is_main_process:
            write_training_curves(self.metrics_log.read(), self.layout.reports)
        for callback in self.callbacks:
            callback.on_end(self, exit_code)

    def log(self, metrics: dict[str, float], split: str) -> None:
        """Append to metrics.jsonl (always), then hand the metrics to the callbacks (trackers)."""
        if self.accelerator.is_main_process:
            self.metrics_log.append(
                {
                    "step": self.progress.step,
                    "epoch": self.progress.epoch,
                    "split": split,
                    "time": time.time(),
                    **metrics,
                }
            )
        for callback in self.callbacks:
            callback.on_metrics(self, metrics, self.progress.step)


class _SyncClock:
    """When the ranks next agree: every rank measures its own step time, the sync point reduces them to the
    slowest, and all derive the same next sync step from it."""

    def __init__(self, step: int):
        self.next_step = step + 1
        self._since = (step, time.perf_counter())

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def microseconds_per_step(self, step: int) -> int:
        since_step, since = self._since
        return int(1e6 * (time.perf_counter() - since) / max(1, step - since_step))

    def schedule(self, step: int, microseconds_per_step: int) -> None:
        if step > self._since[0]:  # the same on every rank: steps advance in lockstep
            self.next_step = step + max(1, int(AGREE_EVERY_S * 1e6) // max(1, microseconds_per_step))
        self._since = (step, time.perf_counter())


class _Window:
    """Loss and image counts between two log points, kept on device so the hot loop never syncs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.grad_norm: torch.Tensor | None = None
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.batches = 0
        self.images = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += loss.float()
        self.batches += 1
        self.images += images

    def flush(self, accelerator: Accelerator) -> tuple[float, float]:
        """(mean loss across ranks, global images per second) since the last flush."""
        stats = torch.stack(
            [
                self.loss_sum,
                torch.tensor(float(self.batches), device=self.device),
                torch.tensor(float(self.images), device=self.device),
            ]
        )
        loss_sum, batches, images = accelerator.reduce(stats, reduction="sum").tolist()
        elapsed = time.perf_counter() - self.started
        self._reset()
        return loss_sum / max(batches, 1), images / max(elapsed, 1e-9)
