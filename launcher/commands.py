"""`emotionnet-launch`: one command from a workstation to a SLURM cluster.

This machine (runs `accelerate launch`; --dry-run prints the command and the resolved configs instead):
    emotionnet-launch --gpus 4 --strategy deepspeed-zero2 --config configs/train/fer2013.yaml optim.lr=3e-4
    emotionnet-launch --cpu --processes 2 --config tests/configs/tiny.yaml      # gloo, laptops and CI
One node of several (run the same on each, with its own --node-rank):
    emotionnet-launch --nodes 2 --node-rank 0 --main-address 10.0.0.1 --main-port 29500 --gpus 8 ...
SLURM (renders slurm/train.sbatch with these resources and submits it; --dry-run shows the script):
    emotionnet-launch slurm --nodes 2 --gpus-per-node 8 --partition gpu --time 12:00:00 \\
        --config configs/train/fer2013.yaml
    emotionnet-launch slurm --cpu --processes 2 --prep demo.csv --synthetic-rows 500 --data-dir demo/data \\
        --config tests/configs/tiny.yaml run.max_steps=40

Arguments the launcher does not know (and everything after `--`) go to the training command
(`python -m emotionnet.cli.train --help`). Exit status: that of the launch; 2 for options that do not fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import sys
from pathlib import Path

from emotionnet.config.args import parse_train_args
from emotionnet.config.loader import ConfigError
from emotionnet.config.recipes import load_train_config
from emotionnet.exit_codes import ExitCode, exit_codes_help
from emotionnet.tracking.mlflow_tracker import resolve_tracking_uri
from emotionnet.tracking.redact import redact_text
from launcher import slurm, values
from launcher.accelerate_cmd import (
    DEFAULT_MODULE,
    PRECISIONS,
    STRATEGIES,
    LaunchError,
    LaunchOptions,
    build_argv,
    check_visible_gpus,
    format_command,
    launch_env,
    resolved_config,
    validate,
    validate_node,
)

PROG = "emotionnet-launch"
# argparse `type=`s: a bad value is refused while parsing, before anything is rendered, written or run.
COUNT = values.argtype(values.count_problem, int)
NAME = values.argtype(values.name_problem)
TEXT_PATH = values.argtype(values.control_problem, Path)
DIRECTIVE_PATH = values.argtype(values.directive_path_problem, Path)


class _Parser(argparse.ArgumentParser):
    """Reports a bad option like every other launcher error: one line, exit status 2 (see `main`)."""

    def error(self, message: str):
        raise LaunchError(message)


def _add_launch_options(parser: argparse.ArgumentParser, per_node_note: str) -> None:
    parser.add_argument("--strategy", choices=STRATEGIES, default="ddp", help="default: ddp")
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="mixed precision (default: bf16 on GPUs, no on CPU)"
    )
    parser.add_argument(
        "--gpus",
        "--gpus-per-node",
        dest="gpus",
        type=COUNT,
        help=f"GPUs {per_node_note} (default: all visible)",
    )
    parser.add_argument("--cpu", action="store_true", help="train with CPU processes (gloo) instead of GPUs")
    parser.add_argument(
        "--processes",
        "--processes-per-node",
        dest="processes",
        type=COUNT,
        help=f"with --cpu: processes {per_node_note} (default 2)",
    )
    parser.add_argument("--nodes", type=COUNT, default=1, help="machines (default 1)")
    parser.add_argument(
        "--module",
        type=values.argtype(values.module_problem),
        default=DEFAULT_MODULE,
        help=f"python module to launch (default {DEFAULT_MODULE})",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")


def local_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=__doc__,
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    _add_launch_options(parser, "on this machine")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's rank with --nodes > 1")
    parser.add_argument(
        "--main-address",
        type=values.argtype(values.host_problem),
        help="address of the --node-rank 0 machine (with --nodes > 1)",
    )
    parser.add_argument(
        "--main-port",
        type=values.argtype(values.port_problem, int),
        help="its rendezvous port (default: a free port here)",
    )
    return parser


def slurm_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} slurm",
        description="Render slurm/train.sbatch for these resources and submit it (or show it with --dry-run).",
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the exit-code table keeps its rows
        allow_abbrev=False,
    )
    _add_launch_options(parser, "per node")
    parser.add_argument(
        "--partition",
        type=values.argtype(values.partition_problem),
        help="SLURM partition(s), comma-separated",
    )
    parser.add_argument("--account", type=NAME, help="SLURM account to charge")
    parser.add_argument(
        "--time",
        type=values.argtype(values.time_problem),
        default="24:00:00",
        help=f"time limit: {values.TIME_FORMATS} (default 24:00:00)",
    )
    parser.add_argument("--job-name", type=NAME, default="emotionnet", help="default emotionnet")
    parser.add_argument(
        "--cpus-per-task", type=COUNT, help="CPU cores per node (default: 1 per CPU process, 4 per GPU)"
    )
    parser.add_argument(
        "--log-dir", type=DIRECTIVE_PATH, default=Path("logs/slurm"), help="default logs/slurm"
    )
    parser.add_argument(
        "--output-dir", type=TEXT_PATH, default=Path("outputs"), help="runs go here (default outputs)"
    )
    parser.add_argument("--run-name", type=NAME, help="run directory name (default <job name>-<job id>)")
    parser.add_argument(
        "--venv", type=TEXT_PATH, default=Path(sys.prefix), help="venv the job activates (default: this one)"
    )
    parser.add_argument(
        "--signal-lead-s",
        type=COUNT,
        default=300,
        help="checkpoint and requeue this long before the time limit",
    )
    parser.add_argument(
        "--stop-grace-s", type=COUNT, default=240, help="time the processes get to save that checkpoint"
    )
    parser.add_argument(
        "--prep", type=TEXT_PATH, metavar="INPUT", help="first prepare this FER2013 CSV/folder in a job"
    )
    parser.add_argument("--data-dir", type=TEXT_PATH, help="with --prep: where the prepared dataset goes")
    parser.add_argument(
        "--synthetic-rows",
        type=COUNT,
        help="with --prep: write a synthetic CSV of N faces to INPUT if missing",
    )
    return parser


def _split(argv: list[str], parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """Launcher options, and the training arguments: unknown ones plus everything after `--`."""
    own, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args, unknown = parser.parse_known_args(own)
    return args, unknown + rest


def visible_gpus() -> int:
    import torch  # only here: importing it takes seconds

    return torch.cuda.device_count()


def _launch_options(args: argparse.Namespace, train_args: list[str], **topology) -> LaunchOptions:
    if args.cpu and args.gpus is not None:
        raise LaunchError("--gpus and --cpu exclude each other; with --cpu, --processes sets the count")
    if not args.cpu and args.processes is not None:
        raise LaunchError("--processes counts CPU processes: add --cpu, or use --gpus for GPUs")
    if args.cpu:
        count = 2 if args.processes is None else args.processes
    elif args.gpus is not None:
        count = args.gpus
    else:
        count = visible_gpus()
        if count == 0:
            raise LaunchError(
                "no GPU is visible here: add --cpu to train with CPU processes, or --gpus N to target a GPU machine"
            )
    opts = LaunchOptions(
        procs_per_node=count,
        strategy=args.strategy,
        precision=args.precision,
        cpu=args.cpu,
        nodes=args.nodes,
        module=args.module,
        train_args=tuple(train_args),
        **topology,
    )
    validate(opts)
    return opts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def run_local(argv: list[str]) -> int:
    args, train_args = _split(argv, local_parser())
    opts = _launch_options(
        args, train_args, node_rank=args.node_rank, main_address=args.main_address, main_port=args.main_port
    )
    if opts.main_port is None and opts.nodes == 1 and opts.num_processes > 1:
        # A free port, so that several launches on one host do not collide on torchrun's default 29500.
        opts = dataclasses.replace(opts, main_port=free_port())
    validate_node(opts)
    argv_out, env = build_argv(opts), launch_env(opts)
    if args.dry_run:
        if not opts.cpu and (visible := visible_gpus()) < opts.procs_per_node:
            print(f"{PROG}: note: {visible} GPU(s) visible on this machine", file=sys.stderr)
        print(redact_text(format_command(argv_out, env)))  # no tracking.uri credentials on screen
        print(resolved_config(opts), end="")
        return ExitCode.OK
    if not opts.cpu:
        check_visible_gpus(opts, visible_gpus())
    print(f"{PROG}: {redact_text(format_command(argv_out, env))}", file=sys.stderr, flush=True)
    # The accelerate of this interpreter's environment; exec so that signals reach it directly.
    local = Path(sys.executable).parent / "accelerate"
    executable = str(local) if local.exists() else shutil.which("accelerate") or "accelerate"
    os.execve(executable, argv_out, {**os.environ, **env})  # does not return


def mlflow_location(opts: slurm.SlurmOptions, run_name: str) -> str:
    """Where the training job's MLflow run will be, from its config (which this also validates)."""
    train_args, overrides = parse_train_args([*opts.launch.train_args, *slurm.train_data_args(opts)])
    try:
        cfg = load_train_config(train_args.config, overrides)
    except ConfigError as err:
        raise LaunchError(f"training configuration: {err}") from err
    if not cfg.tracking.enabled:
        return "off (tracking.enabled=false)"
    uri, _ = resolve_tracking_uri(cfg.tracking, opts.output_dir)
    return f"{redact_text(uri)}, experiment {cfg.tracking.experiment!r}, run {run_name!r}"


def run_slurm(argv: list[str]) -> int:
    args, train_args = _split(argv, slurm_parser())
    if (args.data_dir is None) != (args.prep is None) or (args.synthetic_rows and args.prep is None):
        raise LaunchError("--prep INPUT and --data-dir DIR go together (--synthetic-rows needs them)")
    prep = slurm.PrepJob(args.prep, args.data_dir, args.synthetic_rows) if args.prep else None
    opts = slurm.SlurmOptions(
        launch=_launch_options(args, train_args),
        job_name=args.job_name,
        time=args.time,
        partition=args.partition,
        account=args.account,
        cpus_per_task=args.cpus_per_task,
        log_dir=args.log_dir,
        output_dir=args.output_dir,
        run_name=args.run_name,
        venv=args.venv,
        signal_lead_s=args.signal_lead_s,
        stop_grace_s=args.stop_grace_s,
        prep=prep,
    )
    slurm.validate(opts)
    if args.dry_run:
        mlflow = mlflow_location(opts, opts.run_name or f"{opts.job_name}-<job id>")
        if prep is not None:
            print(f"# ---- prep job (submitted first) ----\n{slurm.render_prep(opts)}")
            print("# ---- training job (starts after the prep job succeeded) ----")
        print(redact_text(slurm.render_train(opts)))  # the submitted script keeps them: it needs them
        print(f"# MLflow: {mlflow}")
        return ExitCode.OK
    run_name = opts.run_name or f"{opts.job_name}-<job id>"
    mlflow = mlflow_location(opts, run_name)  # before submitting: a bad config fails here, not in the queue
    jobs = slurm.submit(opts)
    if jobs.prep_job is not None:
        log = slurm.log_path(opts, opts.prep_job_name, jobs.prep_job)
        print(f"submitted prep job {jobs.prep_job}: log {log}")
    after = f" (starts after job {jobs.prep_job} succeeded)" if jobs.prep_job else ""
    print(
        f"submitted training job {jobs.train_job}{after}: log {slurm.log_path(opts, opts.job_name, jobs.train_job)}"
    )
    print(f"run directory: {slurm.run_dir(opts, jobs.train_job)}")
    print(f"MLflow: {mlflow.replace('<job id>', jobs.train_job)}")
    print(f"preempt it (checkpoint + requeue): scancel --batch --signal=USR1 {jobs.train_job}")
    return ExitCode.OK
