"""The training configuration: one typed dataclass per concern, composed into `TrainConfig`.

Files live in configs/train/*.yaml; any field can be overridden on the command line as
`section.key=value` (e.g. `optim.lr=3e-4 model.depth=2`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from emotionnet.data.loaders import DataConfig, check_at_least, check_within_machine
from emotionnet.data.transforms import AugmentConfig, TTAMode
from emotionnet.model.emotionnet import ModelConfig
from emotionnet.run_layout import run_name_problem


@dataclass
class OptimConfig:
    """AdamW or SGD with Nesterov momentum; weight decay applies to weights only, never to norms, biases,
    gains or embeddings (decoupled for AdamW, L2 for SGD)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9  # SGD only
    grad_clip: float = 1.0  # max global L2 norm; 0 disables clipping
    grad_accum_steps: int = 1
    # AdamW's fused kernels (CUDA and CPU; not under DeepSpeed on a CPU): on the CPU recipe 2 ms an
    # optimizer step instead of 8 for the per-tensor loop.
    fused: bool = True
    # Exponential moving average of the weights, used for validation, exports and snapshots; 0 = off.
    ema_decay: float = 0.0
    # How the learning rate follows the global batch (data.batch_size x processes x grad_accum_steps):
    # optim.lr is the rate at optim.reference_batch, times global/reference ("linear", Goyal et al. 2017,
    # for SGD) or its square root ("sqrt", for Adam: Malladi et al. 2022); "none" keeps optim.lr whatever
    # the number of processes.
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    reference_batch: int = 8

    def __post_init__(self) -> None:
        check_at_least("optim", self, 1, ("grad_accum_steps", "reference_batch"))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in [0, 1) (0 turns it off), got {self.ema_decay}")
        # What the optimizers would refuse (or train on to NaN), refused before a run directory exists.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optim.lr must be a finite number > 0, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("weight_decay", "eps", "momentum", "grad_clip"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"optim.{name} must be a finite number >= 0, got {getattr(self, name)}")


@dataclass
class ScheduleConfig:
    """Linear warm-up, then cosine annealing, stepped once per optimizer step: "cosine" is one cosine that
    ends on the run's last step (schedule.budget_steps, run.num_epochs or run.time_budget_min decide which);
    "restarts" are cycles of cycle_epochs, cycle_mult times longer each (SGDR, warm restarts)."""

    name: Literal["cosine", "restarts"] = "cosine"
    # The run's length in optimizer steps, where "cosine" ends, instead of run.num_epochs.
    budget_steps: int | None = None
    warmup_steps: int = 500
    cycle_epochs: float = 10.0  # "restarts": length of the first cosine cycle, in epochs
    cycle_mult: int = 1  # "restarts": each cycle is this many times longer than the previous one
    min_lr: float = 1e-6
    # Keep the weights at the end of every cosine cycle (snapshots/cycle_<k>/) and evaluate them as an
    # ensemble at the end of training (Huang et al. 2017, "Snapshot ensembles: train 1, get M for free").
    snapshot_ensemble: bool = False

    def __post_init__(self) -> None:
        check_at_least("schedule", self, 1, ("budget_steps",))
        if self.snapshot_ensemble and self.name != "restarts":
            raise ValueError(
                "schedule.snapshot_ensemble needs cycles to snapshot: set schedule.name=restarts"
            )
        if self.cycle_epochs <= 0 or self.cycle_mult < 1:
            raise ValueError(
                f"schedule.cycle_epochs must be > 0 and schedule.cycle_mult >= 1, "
                f"got {self.cycle_epochs} and {self.cycle_mult}"
            )


@dataclass
class LossConfig:
    """Cross-entropy with label smoothing and a remedy for rare classes (emotionnet/train/loss.py)."""

    label_smoothing: float = 0.1
    # Per-class loss weights from the training split's counts n_c: "balanced" N / (K * n_c) (Disgust
    # x9.4 on FER2013), "sqrt" its square root (x3.1), scaled so that the average sample weighs 1.
    class_weights: Literal["none", "balanced", "sqrt"] = "none"
    # Logit adjustment (Menon et al. 2021): train on logits + tau * log(class prior), predict with the
    # plain logits, which shifts decisions towards rare classes; 1.0 is the balanced softmax. 0 = off.
    logit_adjustment: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.logit_adjustment < 0:
            raise ValueError(
                f"loss.logit_adjustment must be >= 0 (0 turns it off), got {self.logit_adjustment}"
            )


@dataclass
class CheckpointConfig:
    every_steps: int = 500  # plus one at every epoch end
    keep_last: int = 3  # the best checkpoint is kept on top of these
    # Resume a checkpoint trained on other data (prep fingerprint, split sizes) or another batch layout.
    resume_changed_data: bool = False

    def __post_init__(self) -> None:
        check_at_least("checkpoint", self, 1, ("every_steps", "keep_last"))


@dataclass
class RunConfig:
    """What to run and where: epochs, precision, seed, output locations, resume."""

    output_dir: str = "outputs"
    run_name: str | None = None  # default: <model>-<precision>-<world size>x-<timestamp>
    num_epochs: int = 30
    # Stop after this many optimizer steps (smoke tests, benchmarks); the schedule keeps its length.
    max_steps: int | None = None
    # Train for this many minutes (per-epoch validation included) instead of run.num_epochs: the step
    # count that fits is planned after the warm-up and re-planned at every sync point from the measured
    # pace (emotionnet/train/budget.py); the cosine ends on the last step, and a resume counts the time
    # already spent.
    time_budget_min: float | None = None
    # None: take it from `accelerate launch` / its config; "off" is the seed command's spelling of "no".
    mixed_precision: Literal["no", "off", "bf16", "fp16"] | None = None
    seed: int = 42
    deterministic: bool = False  # torch.use_deterministic_algorithms; bitwise-repeatable on CPU
    log_every_steps: int = 50
    eval_tta: TTAMode = "none"  # test-time augmentation for the final test
    resume: str | None = None  # "latest" or a checkpoint directory
    dist_timeout_s: int = 600  # a rank stuck this long in a collective aborts the whole launch
    log_sample_ids: bool = False  # write each rank's consumed row ids to <run>/samples/ (data-order audit)
    # NHWC activations for the model and its batches: 1.9x the CPU training throughput of NCHW with
    # oneDNN's convolutions (docs/benchmarks.md, "CPU training throughput"); GPUs' tensor cores want it too.
    # Not under DeepSpeed, which flattens parameters as contiguous bytes.
    channels_last: bool = True
    # CPU threads per process (torch.set_num_threads); None: torch's default (all cores). One thread per
    # process is fastest for small models on a busy or small machine (the demo, 2 CPU processes).
    num_threads: int | None = None
    # torch.compile through Accelerate: its dynamo plugin (one process, DDP) or DeepSpeed's engine.compile
    # (ZeRO); docs/compile.md says what works with what. "reduce-overhead" adds CUDA graphs.
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"  # the last two debug tracing

    def __post_init__(self) -> None:
        check_at_least(
            "run", self, 1, ("num_epochs", "max_steps", "log_every_steps", "dist_timeout_s", "num_threads")
        )
        check_within_machine("run", self, ("num_threads",))
        if self.run_name is not None and (problem := run_name_problem(self.run_name)):
            raise ValueError(f"run.run_name: {problem}")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise ValueError(f"run.time_budget_min must be > 0 minutes, got {self.time_budget_min}")


@dataclass
class TrackingConfig:
    """MLflow tracking; see the module docstring for where runs go."""

    enabled: bool = True
    uri: str | None = None  # wins over MLFLOW_TRACKING_URI; default: sqlite under run.output_dir
    experiment: str = "emotionnet"
    optional: bool = False  # an unreachable store at start: warn and train untracked instead of failing
    system_metrics: bool = True  # CPU, memory, disk, network, GPU (when nvidia-ml-py is installed)
    system_metrics_interval_s: float = 10.0
    log_model: bool = True  # log best/ as the MLflow model (a pyfunc over the safetensors export) at the end
    registered_model_name: str | None = None  # also register the logged model under this name
    registered_model_alias: str | None = None  # e.g. "champion"; needs registered_model_name
    misclassified_max: int = 36  # faces in the misclassified-validation-images grid
    http_max_retries: int = 2  # MLFLOW_HTTP_REQUEST_MAX_RETRIES unless that is set
    http_timeout_s: int = 10  # MLFLOW_HTTP_REQUEST_TIMEOUT unless that is set
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags

    def __post_init__(self) -> None:
        if self.registered_model_alias and not self.registered_model_name:
            raise ValueError("tracking.registered_model_alias needs tracking.registered_model_name")
        if self.system_metrics_interval_s < 1:
            raise ValueError("tracking.system_metrics_interval_s must be at least 1 second")


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.run.time_budget_min is not None and self.schedule.name != "cosine":
            raise ValueError(
                "run.time_budget_min ends one cosine on time; it needs schedule.name=cosine, "
                f"not {self.schedule.name!r}"
            )
        if self.run.time_budget_min is not None and self.schedule.budget_steps is not None:
            raise ValueError("set one run length: run.time_budget_min or schedule.budget_steps, not both")
