"""Typed launch choices -> the `accelerate launch` command that runs them (and checks that they fit).

The accelerate config files in configs/accelerate/ hold each strategy's fixed settings; the command line
adds what varies (process count, nodes, precision). Paths are printed relative to the working directory
when they lie under it, so a printed command can be copied and run from the same place.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from emotionnet import assets
from emotionnet.errors import UserError
from launcher import values

ACCELERATE_CONFIGS = assets.CONFIGS / "accelerate"

Strategy = Literal["ddp", "deepspeed-zero2", "deepspeed-zero3"]
Precision = Literal["no", "bf16", "fp16"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "deepspeed-zero2", "deepspeed-zero3")
PRECISIONS: tuple[Precision, ...] = ("no", "bf16", "fp16")
DEFAULT_MODULE = "emotionnet.cli.train"


class LaunchError(UserError):
    """A combination of launch options that cannot work; the message is one sentence for the user."""


@dataclass(frozen=True)
class LaunchOptions:
    """What to launch: processes per node (GPUs, or CPU processes with `cpu`), nodes, strategy, precision."""

    procs_per_node: int
    strategy: Strategy = "ddp"
    precision: Precision | None = None  # None: bf16 on GPUs, no on CPU
    cpu: bool = False
    nodes: int = 1
    node_rank: int = 0
    main_address: str | None = None  # the rank-0 node's address; needed with nodes > 1
    main_port: int | None = None  # None: torchrun's default (29500)
    module: str = DEFAULT_MODULE
    train_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_processes(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def mixed_precision(self) -> Precision:
        return self.precision or ("no" if self.cpu else "bf16")

    @property
    def zero_stage(self) -> int | None:
        return int(self.strategy[-1]) if self.strategy.startswith("deepspeed") else None


def validate(opts: LaunchOptions) -> None:
    """Raise LaunchError for a combination that cannot run or makes no sense (hardware is checked apart)."""
    if opts.procs_per_node < 1:
        raise LaunchError(f"{'--processes' if opts.cpu else '--gpus'} must be at least 1")
    if opts.nodes < 1:
        raise LaunchError("--nodes must be at least 1")
    check_values(
        ("--module", opts.module, values.module_problem),
        ("--main-address", opts.main_address, values.host_problem),
        ("--main-port", opts.main_port, values.port_problem),
        *(("training argument", arg, values.control_problem) for arg in opts.train_args),
    )
    if opts.cpu and opts.mixed_precision == "fp16":
        raise LaunchError(
            "fp16 needs a GPU (its loss scaling is CUDA-only); on CPU use --precision bf16 or no"
        )
    if opts.cpu and opts.zero_stage is not None:
        raise LaunchError(f"--strategy {opts.strategy} needs GPUs; with --cpu use --strategy ddp")
    if opts.zero_stage == 3 and opts.num_processes == 1:
        raise LaunchError(
            "ZeRO-3 shards parameters across processes, so with a single process it only adds overhead: "
            "use --strategy ddp, or more GPUs/nodes"
        )


def check_values(*checks: tuple[str, object, Callable[[object], str | None]]) -> None:
    """Raise LaunchError for the first (option, value, check) whose value is set and has a problem."""
    for option, value, problem in checks:
        if value is not None and (reason := problem(value)):
            raise LaunchError(f"{option}: {reason}")


def validate_node(opts: LaunchOptions) -> None:
    """For a launch on one node of several by hand (SLURM's batch script fills these in itself)."""
    if opts.nodes > 1 and not (opts.main_address and opts.main_port):
        raise LaunchError(
            "--nodes > 1 needs --main-address and --main-port (where the node with --node-rank 0 listens), "
            "the same on every node"
        )
    if not 0 <= opts.node_rank < opts.nodes:
        raise LaunchError(
            f"--node-rank {opts.node_rank} is outside 0..{opts.nodes - 1} for --nodes {opts.nodes}"
        )


def check_visible_gpus(opts: LaunchOptions, visible: int) -> None:
    """Raise LaunchError when this machine cannot run `opts` (more GPUs asked for than visible)."""
    if opts.cpu or opts.procs_per_node <= visible:
        return
    where = os.environ.get("CUDA_VISIBLE_DEVICES")
    restriction = f" (CUDA_VISIBLE_DEVICES={where})" if where is not None else ""
    raise LaunchError(
        f"--gpus {opts.procs_per_node} asks for more GPUs than the {visible} visible here{restriction}; "
        "use --gpus <= that, or --cpu"
    )


def display_path(path: Path) -> str:
    """Relative to the working directory when under it (copy-pasteable from here), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def accelerate_config_file(opts: LaunchOptions) -> Path:
    if opts.zero_stage is not None:
        return ACCELERATE_CONFIGS / f"deepspeed_zero{opts.zero_stage}.yaml"
    if opts.num_processes == 1:
        return ACCELERATE_CONFIGS / "single.yaml"
    if opts.cpu:
        return ACCELERATE_CONFIGS / "cpu_multiprocess.yaml"
    return ACCELERATE_CONFIGS / ("ddp_multinode.yaml" if opts.nodes > 1 else "ddp.yaml")


def deepspeed_config_file(opts: LaunchOptions) -> Path | None:
    """The DeepSpeed JSON named by the strategy's accelerate config (resolved from the repository root)."""
    if opts.zero_stage is None:
        return None
    config = yaml.safe_load(accelerate_config_file(opts).read_text())
    # The accelerate configs name their DeepSpeed JSON relative to the folder holding configs/.
    return assets.CONFIGS.parent / config["deepspeed_config"]["deepspeed_config_file"]


def strategy_args(opts: LaunchOptions) -> list[str]:
    """The `accelerate launch` options that pick the strategy and precision (the same on every node)."""
    args = ["--config_file", display_path(accelerate_config_file(opts))]
    if opts.cpu:
        # --multi_gpu: torchrun starts the N processes (a MULTI_CPU config without mpirun starts one), and
        # ACCELERATE_USE_CPU (launch_env) keeps them on the CPU, one gloo group, even where GPUs are visible.
        args.append("--multi_gpu" if opts.num_processes > 1 else "--cpu")
    if (ds_config := deepspeed_config_file(opts)) is not None:
        # Absolute or cwd-relative: the accelerate config's own path is relative to the repository root.
        args += ["--deepspeed_config_file", display_path(ds_config)]
    return [*args, "--mixed_precision", opts.mixed_precision]


def launch_env(opts: LaunchOptions) -> dict[str, str]:
    """Environment the launched processes need on top of the caller's."""
    return {"ACCELERATE_USE_CPU": "true"} if opts.cpu else {}


def build_argv(opts: LaunchOptions) -> list[str]:
    """The full `accelerate launch ...` command for this node."""
    topology = ["--num_machines", str(opts.nodes), "--num_processes", str(opts.num_processes)]
    if opts.nodes > 1:
        topology += ["--machine_rank", str(opts.node_rank), "--main_process_ip", str(opts.main_address)]
    if opts.main_port is not None:
        topology += ["--main_process_port", str(opts.main_port)]
    return ["accelerate", "launch", *strategy_args(opts), *topology, "-m", opts.module, *opts.train_args]


def format_command(argv: list[str], env: dict[str, str]) -> str:
    """One shell line: `VAR=value ... accelerate launch ...`."""
    return shlex.join([f"{key}={value}" for key, value in env.items()] + argv)


def resolved_config(opts: LaunchOptions) -> str:
    """The accelerate config as this launch sees it (file + command-line values), and the DeepSpeed JSON."""
    path = accelerate_config_file(opts)
    config = yaml.safe_load(path.read_text())
    config.update(
        num_machines=opts.nodes, num_processes=opts.num_processes, mixed_precision=opts.mixed_precision
    )
    if opts.nodes > 1:
        config.update(machine_rank=opts.node_rank, main_process_ip=opts.main_address)
    if opts.main_port is not None:
        config.update(main_process_port=opts.main_port)
    text = f"# accelerate config: {display_path(path)} with this launch's values\n"
    text += yaml.safe_dump(config, sort_keys=False)
    if (ds_config := deepspeed_config_file(opts)) is not None:
        text += (
            f"# DeepSpeed config: {display_path(ds_config)} ('auto' values are filled from the training "
            "config and the launch at start)\n"
        )
        text += ds_config.read_text()
    return text
