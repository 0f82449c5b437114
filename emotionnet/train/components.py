"""What a training run is made of, built once from its configuration: `build_accelerator`, and
`build_components` (model, loaders, loss, optimizer, schedule, EMA, augmentation) prepared by Accelerate."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    InitProcessGroupKwargs,
    TorchDynamoPlugin,
    set_seed,
)
from torch import nn
from torchvision.transforms import v2

from emotionnet.config.loader import ConfigError
from emotionnet.config.schema import TrainConfig
from emotionnet.data.augment import AugmentSampler, BatchAugment
from emotionnet.data.loaders import class_counts, create_loader, load_splits
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import build_batch_mixing
from emotionnet.model.emotionnet import create_model
from emotionnet.train.ema import WeightEMA
from emotionnet.train.loss import Criterion
from emotionnet.train.optim import LRSchedule, create_optimizer, create_scheduler, scaled_lr
from emotionnet.train.replicas import convert_sync_batchnorm, use_sync_batchnorm

log = logging.getLogger(__name__)


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


@dataclass
class Components:
    """The prepared parts of a run; `model`, `optimizer`, `scheduler` and the loaders are Accelerate's."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lr_schedule: LRSchedule  # the scheduler's own curve: its length is planned by a time-budgeted run
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    splits: dict[str, datasets.Dataset]
    preprocessing: Preprocessing
    augment: BatchAugment  # applied on the device to the faces and draws the loader's workers made
    batch_mixing: v2.Transform | None  # mixup / cutmix: (images, labels) -> (mixed, soft targets)
    criterion: Criterion
    ema: WeightEMA | None
    channels_last: bool
    input_dtype: torch.dtype  # DeepSpeed keeps bf16/fp16 weights and inputs must match; else autocast
    steps_per_epoch: int  # optimizer steps
    lr: float  # the peak learning rate, optim.lr scaled to the global batch (optim.lr_scaling)

    @property
    def eval_model(self) -> nn.Module:
        """What validation, exports and snapshots use: the EMA weights when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model


def build_components(cfg: TrainConfig, accelerator: Accelerator) -> Components:
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed and cfg.optim.ema_decay:
        raise ConfigError(
            "optim.ema_decay is not supported with DeepSpeed (ZeRO shards the weights it would "
            "average); use DDP or set optim.ema_decay=0"
        )
    preprocessing = Preprocessing(input_size=cfg.model.input_size)
    # Same initial weights on every rank, then per-rank streams for augmentation and dropout.
    set_seed(cfg.run.seed, deterministic=cfg.run.deterministic)
    model = create_model(cfg.model)
    if use_sync_batchnorm(cfg.model.sync_batchnorm, accelerator.num_processes):
        model = convert_sync_batchnorm(model)
    set_seed(cfg.run.seed, device_specific=True)
    # DeepSpeed flattens and broadcasts parameters as contiguous bytes: NHWC conv weights are refused.
    channels_last = cfg.run.channels_last and not deepspeed
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if deepspeed and accelerator.mixed_precision != "no":
        # DeepSpeed trains in bf16/fp16 weights. ZeRO-2 casts the whole module, ZeRO-3 only the
        # parameters: cast buffers (BatchNorm statistics) too, or CPU batch_norm rejects the mix.
        model = model.to(torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float16)

    splits = load_splits(cfg.data.data_dir)
    if "train" not in splits or "validation" not in splits:
        raise ConfigError(
            f"{cfg.data.data_dir} needs a 'train' and a 'validation' split; it has {list(splits)}"
        )
    # Workers read uint8 faces and draw each face's augmentation; train_step applies it on the device.
    augment = BatchAugment(cfg.augment, preprocessing)
    sampler = AugmentSampler(cfg.augment, preprocessing, cfg.run.seed) if augment.enabled else None
    train_loader = create_loader(
        splits["train"],
        cfg.data.batch_size,
        shuffle=True,
        drop_last=True,
        cfg=cfg.data,
        seed=cfg.run.seed,
        augment=sampler,
    )
    steps_per_epoch = len(train_loader) // (accelerator.num_processes * cfg.optim.grad_accum_steps)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the training split ({len(splits['train'])} rows) is smaller than one global batch "
            f"({cfg.data.batch_size} x {accelerator.num_processes} processes x {cfg.optim.grad_accum_steps})"
        )
    # DeepSpeed on a CPU keeps the per-tensor loop (fused kernels untried under its ZeRO partitions).
    fused = cfg.optim.fused and (accelerator.device.type == "cuda" or not deepspeed)
    batch = global_batch(cfg, accelerator.num_processes)
    lr = scaled_lr(cfg.optim, batch)
    if accelerator.is_main_process:
        log.info(
            "learning rate %g: optim.lr %g, %s scaling, global batch %d (reference %d)",
            lr, cfg.optim.lr, cfg.optim.lr_scaling, batch, cfg.optim.reference_batch,
        )  # fmt: skip
    optimizer = create_optimizer(model, cfg.optim, fused=fused, lr=lr)
    scheduler = create_scheduler(
        optimizer, cfg.schedule, steps_per_epoch, schedule_steps(cfg, steps_per_epoch)
    )
    lr_schedule = scheduler.lr_lambdas[0]  # before prepare wraps it
    fill_deepspeed_config(accelerator, cfg)
    gather_attention_whole(accelerator, model)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader(cfg, splits["validation"]), scheduler
    )
    ema = None
    if cfg.optim.ema_decay:
        ema = WeightEMA(accelerator.unwrap_model(model, keep_torch_compile=False), cfg.optim.ema_decay)
    return Components(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        lr_schedule=lr_schedule,
        train_loader=train_loader,
        val_loader=val_loader,
        splits=splits,
        preprocessing=preprocessing,
        augment=augment,
        batch_mixing=build_batch_mixing(cfg.augment, cfg.model.num_classes),
        criterion=Criterion(cfg.loss, class_counts(splits["train"]), accelerator.device),
        ema=ema,
        channels_last=channels_last,
        input_dtype=next(model.parameters()).dtype if deepspeed else torch.float32,
        steps_per_epoch=len(train_loader) // cfg.optim.grad_accum_steps,
        lr=lr,
    )


def global_batch(cfg: TrainConfig, num_processes: int) -> int:
    """Faces per optimizer step, over all processes and accumulated micro-batches."""
    return cfg.data.batch_size * num_processes * cfg.optim.grad_accum_steps


def eval_loader(cfg: TrainConfig, split: datasets.Dataset) -> torch.utils.data.DataLoader:
    return create_loader(
        split, cfg.data.eval_batch_size, shuffle=False, drop_last=False, cfg=cfg.data, seed=cfg.run.seed
    )


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> int | None:
    """The run's length, where its cosine ends: schedule.budget_steps or run.num_epochs; None for a
    time-budgeted run, which plans it after the warm-up (control.RunControl)."""
    if cfg.run.time_budget_min is not None:
        return None
    return cfg.schedule.budget_steps or steps_per_epoch * cfg.run.num_epochs


def fill_deepspeed_config(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed JSON's `auto` clipping and micro-batch from the training config (Accelerate would
    take the smaller of the training and evaluation batches as the micro-batch)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    filled = {"gradient_clipping": cfg.optim.grad_clip, "train_micro_batch_size_per_gpu": cfg.data.batch_size}
    for key, value in filled.items():
        if plugin.deepspeed_config.get(key, "auto") == "auto":
            plugin.deepspeed_config[key] = value


def gather_attention_whole(accelerator: Accelerator, model: nn.Module) -> None:
    """Under ZeRO-3, gather each `nn.MultiheadAttention`'s parameters, its `out_proj`'s included, before
    its forward. It reads `out_proj.weight` without calling `out_proj`, and DeepSpeed gathers a module's
    shards only when that module's forward runs (eagerly it catches the stray read; a compiled graph would
    get the empty shard)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return
    from deepspeed.utils import set_z3_leaf_modules

    set_z3_leaf_modules(model, [nn.MultiheadAttention])
