"""What SyncBatchNorm costs on the CPU: training steps/s of N DDP processes over gloo, `model.sync_batchnorm`
true against false.

    python -m benchmarks.bench_sync_batchnorm                  # 4 processes, 2 runs each, ~3 minutes on 2 cores
    python -m benchmarks.bench_sync_batchnorm --processes 2 --steps 6 --warmup 2 --repeats 1 --doc ''  # smoke run

Each run is a real training launch, as `emotionnet-launch --cpu` starts it (launcher.accelerate_cmd:
`accelerate launch` with configs/accelerate/cpu_multiprocess.yaml, one gloo group, one compute thread per
process): `python -m emotionnet.cli.train --config tests/configs/tiny.yaml` with per-process batch 8,
`run.max_steps=--steps`, `run.mixed_precision=no`, `tracking.enabled=false`, augmentation as tiny.yaml has
it, on synthetic FER-format faces through the prep stage (enough that the timed steps stay in one epoch, so
no validation falls among them; `checkpoint.every_steps=--steps` keeps checkpoints out too).

Steps/s come from the `time` of the run's own `metrics.jsonl` train records: (steps - warmup) divided by
the seconds between the record at step `--warmup` and the one at step `--steps`. The run logs every
gcd(steps, warmup) steps, not every step: each log is a sync point with an all-reduce of its own, which
would add a collective to every step of both settings. Settings alternate (on, off, on, off, ...), so a load
change on a shared machine hits both alike; a setting's figure is the mean of its runs. The last line is one
JSON object: {"benchmark": "sync_batchnorm", "processes", "steps_per_s_on", "steps_per_s_off", "slowdown"},
slowdown being off / on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from torch import nn

from benchmarks import trainer_steps
from benchmarks.report import benchmark_parser, machine_line, publish
from emotionnet.config.recipes import load_train_config
from emotionnet.model import create_model
from emotionnet.run_layout import METRICS
from launcher.accelerate_cmd import LaunchOptions, build_argv, launch_env
from launcher.commands import free_port

SECTION = "## SyncBatchNorm on the CPU"
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "tests" / "configs" / "tiny.yaml"
PER_PROCESS_BATCH = 8
SETTINGS = ("on", "off")  # model.sync_batchnorm=true / false, in the order each round runs them


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def launch_command(processes: int, train_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The product launcher's CPU launch of the training CLI, with this interpreter's accelerate."""
    opts = LaunchOptions(
        procs_per_node=processes,
        cpu=True,
        precision="no",
        main_port=free_port(),
        train_args=tuple(train_args),
    )
    argv = build_argv(opts)
    assert argv[:2] == ["accelerate", "launch"], argv
    return [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]], launch_env(opts)


def steps_per_s(metrics: Path, warmup: int, steps: int) -> float:
    """(steps - warmup) / seconds between the train records at step `warmup` and step `steps`."""
    times = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("split") == "train":
            times[record["step"]] = record["time"]
    missing = [s for s in (warmup, steps) if s not in times]
    assert not missing, f"{metrics} has no train record at step(s) {missing}: {sorted(times)}"
    return (steps - warmup) / (times[steps] - times[warmup])


def run_once(args: argparse.Namespace, data: Path, out: Path, setting: str, index: int) -> float:
    """One training launch with SyncBatchNorm `setting`; its steps/s after the warm-up."""
    run_name = f"sync-{setting}-{index}"
    train_args = [
        "--config", str(CONFIG), "--run_name", run_name,
        f"model.sync_batchnorm={'true' if setting == 'on' else 'false'}",
        f"data.data_dir={data}", f"data.batch_size={PER_PROCESS_BATCH}", f"run.output_dir={out}",
        f"run.max_steps={args.steps}", f"run.log_every_steps={math.gcd(args.steps, args.warmup)}",
        f"checkpoint.every_steps={args.steps}", "run.mixed_precision=no", "tracking.enabled=false",
    ]  # fmt: skip
    argv, env = launch_command(args.processes, train_args)
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(
        argv, capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **threads, **env}
    )
    if done.returncode != 0:
        raise SystemExit(f"run {run_name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return steps_per_s(out / run_name / METRICS, args.warmup, args.steps)


def batchnorm_layers() -> int:
    model = create_model(load_train_config(str(CONFIG)).model)
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def report(command: str, results: dict[str, list[float]], args, load: tuple[float, float]) -> str:
    means = {setting: statistics.mean(rates) for setting, rates in results.items()}
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        machine_line(load),
        f"Setup: `{CONFIG.relative_to(REPO_ROOT)}` ({batchnorm_layers()} BatchNorm layers), {args.processes} DDP "
        f"processes over gloo (configs/accelerate/cpu_multiprocess.yaml, one thread each), per-process batch "
        f"{PER_PROCESS_BATCH}, {args.steps} steps with the first {args.warmup} left out, synthetic faces; "
        f"steps/s from the run's metrics.jsonl times; {args.repeats} run(s) per setting, alternating.",
        "",
        "| sync_batchnorm | run | steps/s |",
        "|---|---:|---:|",
    ]
    for index in range(args.repeats):
        for setting in SETTINGS:
            lines.append(f"| {setting} | {index + 1} | {results[setting][index]:.2f} |")
    for setting in SETTINGS:
        lines.append(f"| {setting} | mean | **{means[setting]:.2f}** |")
    lines += ["", f"off / on: **{means['off'] / means['on']:.2f}x** (how much slower a step is with it)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--processes", type=positive, default=4, help="DDP processes (gloo)")
    parser.add_argument("--steps", type=positive, default=40, help="training steps per run")
    parser.add_argument("--warmup", type=positive, default=10, help="first steps left out of the timing")
    parser.add_argument("--repeats", type=positive, default=2, help="runs per setting, alternating")
    args = parser.parse_args(argv)
    if args.processes < 2:
        parser.error("--processes must be at least 2: SyncBatchNorm syncs nothing in one process")
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")

    load_start = os.getloadavg()[0]
    results: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="bench-syncbn-") as tmp:
        # Room for every step in one epoch: validation would otherwise fall among the timed steps.
        train_rows = args.processes * PER_PROCESS_BATCH * (args.steps + 2)
        data = trainer_steps.synthetic_data(Path(tmp), train_rows)
        for index in range(args.repeats):
            for setting in SETTINGS:
                results[setting].append(run_once(args, data, Path(tmp) / "runs", setting, index + 1))
                print(
                    f"run {index + 1} sync_batchnorm {setting}: {results[setting][-1]:.2f} steps/s",
                    flush=True,
                )
    command = shlex.join(
        ["python", "-m", "benchmarks.bench_sync_batchnorm", *(sys.argv[1:] if argv is None else argv)]
    )
    publish(report(command, results, args, (load_start, os.getloadavg()[0])), args.doc)
    on, off = (statistics.mean(results[setting]) for setting in SETTINGS)
    summary = {
        "benchmark": "sync_batchnorm",
        "processes": args.processes,
        "steps_per_s_on": round(on, 3),
        "steps_per_s_off": round(off, 3),
        "slowdown": round(off / on, 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
