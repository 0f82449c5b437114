"""The training configuration: one typed dataclass per concern, composed into `TrainConfig`.

Files live in configs/train/*.yaml; any field can be overridden on the command line as
`section.key=value` (e.g. `optim.lr=3e-4 model.depth=2`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from emotionnet.data.loaders import DataConfig, check_at_least
from emotionnet.data.transforms import AugmentConfig, TTAMode
from emotionnet.model.emotionnet import ModelConfig
from emotionnet.run_layout import run_name_problem


@dataclass
class OptimConfig:
    """AdamW; weight decay is applied to weights only, never to norms, biases or embeddings."""

    lr: float = 1e-4
    weight_decay: float = 1e-5
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global L2 norm; 0 disables clipping
    grad_accum_steps: int = 1
    # Exponential moving average of the weights, used for validation, exports and snapshots; 0 = off.
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        check_at_least("optim", self, 1, ("grad_accum_steps",))


@dataclass
class ScheduleConfig:
    """Linear warm-up, then cosine annealing with warm restarts, stepped once per optimizer step."""

    warmup_steps: int = 500
    cycle_epochs: float = 10.0  # length of the first cosine cycle, in epochs
    cycle_mult: int = 1  # each cycle is this many times longer than the previous one
    min_lr: float = 1e-6
    # Keep the weights at the end of every cosine cycle (snapshots/cycle_<k>/) and evaluate them as an
    # ensemble at the end of training (Huang et al. 2017, "Snapshot ensembles: train 1, get M for free").
    snapshot_ensemble: bool = False


@dataclass
class LossConfig:
    label_smoothing: float = 0.1
    # "balanced": weight class c by N / (K * n_c) from the training split's counts (Disgust is rare).
    class_weights: Literal["none", "balanced"] = "none"


@dataclass
class CheckpointConfig:
    every_steps: int = 500  # plus one at every epoch end
    keep_last: int = 3  # the best checkpoint is kept on top of these

    def __post_init__(self) -> None:
        check_at_least("checkpoint", self, 1, ("every_steps", "keep_last"))


@dataclass
class RunConfig:
    """What to run and where: epochs, precision, seed, output locations, resume."""

    output_dir: str = "outputs"
    run_name: str | None = None  # default: <model>-<precision>-<world size>x-<timestamp>
    num_epochs: int = 30
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests, benchmarks)
    # None: take it from `accelerate launch` / its config; "off" is the seed command's spelling of "no".
    mixed_precision: Literal["no", "off", "bf16", "fp16"] | None = None
    seed: int = 42
    deterministic: bool = False  # torch.use_deterministic_algorithms; bitwise-repeatable on CPU
    log_every_steps: int = 50
    eval_tta: TTAMode = "none"  # test-time augmentation for the final test
    resume: str | None = None  # "latest" or a checkpoint directory
    dist_timeout_s: int = 600  # a rank stuck this long in a collective aborts the whole launch
    log_sample_ids: bool = False  # write each rank's consumed row ids to <run>/samples/ (data-order audit)
    channels_last: bool = False
    # torch.compile through Accelerate: its dynamo plugin (one process, DDP) or DeepSpeed's engine.compile
    # (ZeRO); docs/compile.md says what works with what. "reduce-overhead" adds CUDA graphs.
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"  # the last two debug tracing

    def __post_init__(self) -> None:
        check_at_least("run", self, 1, ("num_epochs", "max_steps", "log_every_steps", "dist_timeout_s"))
        if self.run_name is not None and (problem := run_name_problem(self.run_name)):
            raise ValueError(f"run.run_name: {problem}")


@dataclass
class TrackingConfig:
    """MLflow tracking; see the module docstring for where runs go."""

    enabled: bool = True
    uri: str | None = None  # wins over MLFLOW_TRACKING_URI; default: sqlite under run.output_dir
    experiment: str = "emotionnet"
    optional: bool = False  # an unreachable store at start: warn and train untracked instead of failing
    system_metrics: bool = True  # CPU, memory, disk, network, GPU (when nvidia-ml-py is installed)
    system_metrics_interval_s: float = 10.0
    log_model: bool = True  # log best/ with mlflow.pytorch.log_model at the end of the run
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
