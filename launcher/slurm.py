"""`emotionnet-launch slurm`: render slurm/train.sbatch (and prep.sbatch) with the requested resources, then
submit them with sbatch.

The batch scripts in slurm/ are the templates: they stay runnable by hand, and rendering only replaces
their `#SBATCH` lines and their settings block (between `# >>> settings` and `# <<< settings`), so what
runs is what a user reads there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.files import write_atomic
from emotionnet import assets
from launcher import values
from launcher.accelerate_cmd import (
    LaunchError,
    LaunchOptions,
    check_values,
    launch_env,
    strategy_args,
)

SLURM_DIR = assets.SLURM
TRAIN_TEMPLATE = SLURM_DIR / "train.sbatch"
PREP_TEMPLATE = SLURM_DIR / "prep.sbatch"
_SETTINGS = re.compile(r"^# >>> settings.*?\n(.*?)^# <<< settings\n", re.M | re.S)
_DIRECTIVE = re.compile(r"^#SBATCH .*\n", re.M)
# The batch script sets these itself (a run name stable across requeues, --resume latest, the output dir).
_RESERVED_TRAIN_ARGS = re.compile(
    r"^(--run_name|--resume|--output_dir|run\.run_name=|run\.resume=|run\.output_dir=)"
)
SBATCH_TIMEOUT_S = 60
CPUS_PER_GPU = 4  # default --cpus-per-task share per GPU: the process and its data-loader workers


@dataclass(frozen=True)
class PrepJob:
    """Run slurm/prep.sbatch first: prepare `input` into `data_dir`, which training then reads."""

    input: Path
    data_dir: Path
    synthetic_rows: int | None = None  # write a synthetic CSV of this many faces to `input` when missing


@dataclass(frozen=True)
class SlurmOptions:
    launch: LaunchOptions  # per-node processes, nodes, strategy, precision, module, training arguments
    job_name: str = "emotionnet"
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None  # default: one per CPU process, CPUS_PER_GPU per GPU
    log_dir: Path = Path("logs/slurm")
    output_dir: Path = Path("outputs")
    run_name: str | None = None  # default: <job name>-<job id>
    venv: Path = Path(sys.prefix)
    signal_lead_s: int = 300  # SIGUSR1 this long before the time limit
    stop_grace_s: int = 240  # how long the processes get to checkpoint once signalled
    prep: PrepJob | None = None
    # The jobs run here, so relative paths in the training arguments mean what they mean here.
    workdir: Path = field(default_factory=Path.cwd)

    @property
    def cpus(self) -> int:
        per_proc = 1 if self.launch.cpu else CPUS_PER_GPU
        return self.cpus_per_task or self.launch.procs_per_node * per_proc

    @property
    def prep_job_name(self) -> str:
        return f"{self.job_name}-prep"


def validate(opts: SlurmOptions) -> None:
    """Raise LaunchError for options that cannot run, or for a value that cannot go into a batch script."""
    check_values(
        ("--job-name", opts.job_name, values.name_problem),
        ("--run-name", opts.run_name, values.name_problem),
        ("--partition", opts.partition, values.partition_problem),
        ("--account", opts.account, values.name_problem),
        ("--time", opts.time, values.time_problem),
        ("--cpus-per-task", opts.cpus_per_task, values.count_problem),
        ("--signal-lead-s", opts.signal_lead_s, values.count_problem),
        ("--stop-grace-s", opts.stop_grace_s, values.count_problem),
        # sbatch reads these two from #SBATCH lines, the others are quoted into the settings block.
        ("--log-dir", opts.log_dir.resolve(), values.directive_path_problem),
        ("the working directory", opts.workdir, values.directive_path_problem),
        ("--output-dir", opts.output_dir.resolve(), values.control_problem),
        ("--venv", opts.venv, values.control_problem),
        *(
            [
                ("--prep", opts.prep.input.resolve(), values.control_problem),
                ("--data-dir", opts.prep.data_dir.resolve(), values.control_problem),
            ]
            if opts.prep
            else []
        ),
    )
    if reserved := [arg for arg in opts.launch.train_args if _RESERVED_TRAIN_ARGS.match(arg)]:
        raise LaunchError(
            f"{reserved[0]} is set by the batch script (it resumes the run named --run-name under --output-dir "
            "after a requeue); pass --run-name / --output-dir to emotionnet-launch slurm instead"
        )
    if (limit_s := values.time_seconds(opts.time)) <= opts.signal_lead_s:
        raise LaunchError(
            f"--time {opts.time} ({limit_s} s) must exceed --signal-lead-s {opts.signal_lead_s}: the job is "
            "signalled to checkpoint that long before its time limit"
        )
    if opts.signal_lead_s <= opts.stop_grace_s:
        raise LaunchError(
            f"--signal-lead-s {opts.signal_lead_s} must exceed --stop-grace-s {opts.stop_grace_s}: the checkpoint "
            "has to fit between the signal and the time limit"
        )
    if opts.prep and opts.prep.synthetic_rows is not None and opts.prep.synthetic_rows < 10:
        raise LaunchError("--synthetic-rows must be at least 10")


def _sh_array(name: str, words: list[str]) -> str:
    return f"{name}=({shlex.join(words)})"


def _sh_var(name: str, value: str | Path) -> str:
    return f"{name}={shlex.quote(str(value))}"


def render(template: str, directives: list[str], settings: list[str]) -> str:
    """The template with its #SBATCH lines and its settings block replaced."""
    first = _DIRECTIVE.search(template)
    if first is None or not _SETTINGS.search(template):
        raise LaunchError("the batch-script template has no #SBATCH lines or no '# >>> settings' block")
    # The last guard for values that did not pass through `validate`: no value may start a line of its own.
    for line in [*directives, *settings]:
        if problem := values.control_problem(line):
            raise LaunchError(f"refusing to render a batch script: {problem}")
    head, tail = template[: first.start()], _DIRECTIVE.sub("", template[first.start() :])
    text = head + "".join(f"#SBATCH {d}\n" for d in directives) + tail
    block = "".join(line + "\n" for line in settings)
    return _SETTINGS.sub(lambda m: m.group(0).replace(m.group(1), block), text, count=1)


def _common_directives(opts: SlurmOptions, job_name: str) -> list[str]:
    lines = [f"--job-name={job_name}", f"--chdir={opts.workdir}"]
    lines += [f"--partition={opts.partition}"] if opts.partition else []
    lines += [f"--account={opts.account}"] if opts.account else []
    return [*lines, f"--output={opts.log_dir.resolve()}/%x-%j.out"]


def train_data_args(opts: SlurmOptions) -> list[str]:
    return [f"data.data_dir={opts.prep.data_dir.resolve()}"] if opts.prep else []


def render_train(opts: SlurmOptions) -> str:
    launch = opts.launch
    directives = [
        *_common_directives(opts, opts.job_name),
        f"--nodes={launch.nodes}",
        "--ntasks-per-node=1",
        *([] if launch.cpu else [f"--gpus-per-node={launch.procs_per_node}"]),
        f"--cpus-per-task={opts.cpus}",
        f"--time={opts.time}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{opts.signal_lead_s}",
    ]
    settings = [
        _sh_var("EMOTIONNET_VENV", opts.venv),
        _sh_array("ACCELERATE_ARGS", strategy_args(launch)),
        *(f"export {_sh_var(key, value)}" for key, value in launch_env(launch).items()),
        _sh_var("PROCS_PER_NODE", str(launch.procs_per_node)),
        _sh_var("TRAIN_MODULE", launch.module),
        _sh_var("OUTPUT_DIR", opts.output_dir.resolve()),
        _sh_var("RUN_NAME", opts.run_name) if opts.run_name else "RUN_NAME=$SLURM_JOB_NAME-$SLURM_JOB_ID",
        _sh_var("STOP_GRACE_S", str(opts.stop_grace_s)),
        _sh_array("TRAIN_ARGS", [*launch.train_args, *train_data_args(opts)]),
    ]
    return render(TRAIN_TEMPLATE.read_text(), directives, settings)


def render_prep(opts: SlurmOptions) -> str:
    assert opts.prep is not None
    prep = opts.prep
    directives = [
        *_common_directives(opts, opts.prep_job_name),
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={min(opts.cpus, 4)}",
        "--time=01:00:00",
    ]
    settings = [
        _sh_var("EMOTIONNET_VENV", opts.venv),
        _sh_var("SYNTH_ROWS", "" if prep.synthetic_rows is None else str(prep.synthetic_rows)),
        _sh_array("PREP_ARGS", [str(prep.input.resolve()), str(prep.data_dir.resolve())]),
    ]
    return render(PREP_TEMPLATE.read_text(), directives, settings)


def log_path(opts: SlurmOptions, job_name: str, job_id: str) -> Path:
    return opts.log_dir.resolve() / f"{job_name}-{job_id}.out"


def run_dir(opts: SlurmOptions, job_id: str) -> Path:
    return opts.output_dir.resolve() / (opts.run_name or f"{opts.job_name}-{job_id}")


def _write_script(opts: SlurmOptions, job_name: str, text: str) -> Path:
    """Keep the rendered script next to the logs (SLURM runs its own copy), written via a temp file."""
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    path = opts.log_dir.resolve() / f"{job_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sbatch"
    write_atomic(path, text, mode=0o755)
    return path


def sbatch(script: Path, *options: str) -> str:
    """Submit with sbatch; returns the job id."""
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch is not on PATH: run emotionnet-launch slurm on a SLURM login node")
    result = subprocess.run(
        ["sbatch", "--parsable", *options, str(script)],
        capture_output=True,
        text=True,
        timeout=SBATCH_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise LaunchError(f"sbatch rejected {script.name}: {reason}")
    return result.stdout.strip().split(";")[0]


@dataclass(frozen=True)
class Submitted:
    train_job: str
    prep_job: str | None


def submit(opts: SlurmOptions) -> Submitted:
    """Submit the prep job (if any) and the training job, which starts only after prep succeeded."""
    prep_job = None
    dependency: list[str] = []
    if opts.prep is not None:
        prep_job = sbatch(_write_script(opts, opts.prep_job_name, render_prep(opts)))
        dependency = [f"--dependency=afterok:{prep_job}", "--kill-on-invalid-dep=yes"]
    train_job = sbatch(_write_script(opts, opts.job_name, render_train(opts)), *dependency)
    return Submitted(train_job, prep_job)
