"""CPU training throughput: the real `Trainer.train_step` under the CPU recipe, one setting against another.

    python -m benchmarks.bench_train_cpu                       # recipe before vs now, ~10 minutes on 2 cores
    python -m benchmarks.bench_train_cpu --variant compile=run.compile=true --variant bf16=run.mixed_precision=bf16
    python -m benchmarks.bench_train_cpu --rounds 1 --steps 6 --warmup 2 --synthetic --doc ''   # smoke run

Each variant is `fer2013_cpu` plus its overrides: "baseline" is the recipe as it was before channels_last
and fused AdamW became the defaults (`run.channels_last=false optim.fused=false`), "new" is the recipe
as it is. One worker process per
(round, variant) builds the Trainer (Accelerate, the prepared loader with its worker, on-device
augmentation, loss, AdamW, scheduler) and times `next(loader)` + `Trainer.train_step` over `--steps` steps
after `--warmup` (allocations, first compilation). Variants alternate within every round, so load changes
on a shared machine hit each alike; a variant's figure is the median of its rounds. Each process runs as
one process of the recipe's launch (`--threads` compute threads, 1 by default: the recipe launches one
process per core). The last line is one JSON object: {"baseline_img_s", "new_img_s", "ratio", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import trainer_steps
from benchmarks.report import benchmark_parser, machine_line, publish

SECTION = "## CPU training throughput"
RECIPE = "fer2013_cpu"
REAL_DATA = Path("dataset/fer2013")
TARGET_RATIO = 1.8
DEFAULT_VARIANTS = {"baseline": ["run.channels_last=false", "optim.fused=false"], "new": []}


def worker(args: argparse.Namespace) -> None:
    """One variant in this process: print {"img_s": ..., "median_ms": ...} as the last line."""
    torch.set_num_threads(args.threads)
    overrides = [f"run.num_threads={args.threads}", *args.overrides]
    trainer = trainer_steps.build_trainer(RECIPE, Path(args.data), Path(args.out), overrides)
    batches = iter(trainer.parts.train_loader)
    trainer_steps.time_steps(trainer, batches, args.warmup)
    timed_ms = trainer_steps.time_steps(trainer, batches, args.steps)
    img_s = len(timed_ms) * trainer.cfg.data.batch_size * 1000 / sum(timed_ms)
    print(json.dumps({"img_s": img_s, "median_ms": statistics.median(timed_ms)}))


def run_variant(args: argparse.Namespace, data: Path, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        worker_args = [
            "--data", str(data), "--out", out, "--threads", str(args.threads),
            "--steps", str(args.steps), "--warmup", str(args.warmup),
            *[f"--override={o}" for o in overrides],
        ]  # fmt: skip
        try:
            return trainer_steps.run_worker(
                "benchmarks.bench_train_cpu", worker_args, {"OMP_NUM_THREADS": str(args.threads)}
            )
        except trainer_steps.WorkerError as err:
            raise SystemExit(f"variant {overrides} failed:\n{err.stderr[-3000:]}") from None


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """`name=key=value,key=value` -> {name: [key=value, ...]}, after the default pair."""
    variants = dict(DEFAULT_VARIANTS)
    for spec in specs:
        name, _, overrides = spec.partition("=")
        variants[name] = [o for o in overrides.split(",") if o]
    return variants


def report(command: str, variants: dict, results: dict, args, data_label: str, load: tuple) -> str:
    base = statistics.median(r["img_s"] for r in results["baseline"])
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        machine_line(load),
        f"Setup: recipe `{RECIPE}` (per-process batch 32, full EmotionNet at stride 16, on-device "
        f"augmentation, AdamW), one process with {args.threads} compute thread(s) as one rank of the recipe's "
        f"launch, data {data_label}; `next(loader)` + `Trainer.train_step` timed over {args.steps} steps after "
        f"{args.warmup} warm-up steps, {args.rounds} rounds, variants alternating within each round.",
        "",
        "| variant | overrides | images/s per round | median images/s | vs baseline |",
        "|---|---|---|---:|---:|",
    ]
    for name, overrides in variants.items():
        rates = [r["img_s"] for r in results[name]]
        median = statistics.median(rates)
        lines.append(
            f"| {name} | {' '.join(f'`{o}`' for o in overrides) or '(recipe as is)'} | "
            f"{', '.join(f'{r:.1f}' for r in rates)} | {median:.1f} | {median / base:.2f}x |"
        )
    ratio = statistics.median(r["img_s"] for r in results["new"]) / base
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    lines += ["", f"new / baseline: **{ratio:.2f}x** (target >= {TARGET_RATIO}x: {verdict})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=8, help="steps not timed (allocations, compilation)")
    parser.add_argument("--threads", type=int, default=1, help="compute threads of each process")
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value[,key=value]")
    parser.add_argument(
        "--synthetic", action="store_true", help=f"synthetic faces even if {REAL_DATA} exists"
    )
    trainer_steps.add_worker_arguments(parser)
    parser.add_argument("--override", dest="overrides", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    variants = parse_variants(args.variant)
    load_start = os.getloadavg()[0]
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        real = REAL_DATA.is_dir() and not args.synthetic
        train_rows = (args.steps + args.warmup) * 32 * 2
        data = REAL_DATA if real else trainer_steps.synthetic_data(Path(tmp), train_rows)
        for round_index in range(args.rounds):
            for name, overrides in variants.items():
                results[name].append(run_variant(args, data, overrides))
                print(
                    f"round {round_index + 1} {name}: {results[name][-1]['img_s']:.1f} images/s", flush=True
                )
    data_label = f"FER2013 ({REAL_DATA})" if real else "synthetic FER-format faces through the prep stage"
    command = " ".join(["python -m benchmarks.bench_train_cpu", *(sys.argv[1:] if argv is None else argv)])
    publish(report(command, variants, results, args, data_label, (load_start, os.getloadavg()[0])), args.doc)
    medians = {name: statistics.median(r["img_s"] for r in rs) for name, rs in results.items()}
    summary = {
        "baseline_img_s": round(medians["baseline"], 1),
        "new_img_s": round(medians["new"], 1),
        "ratio": round(medians["new"] / medians["baseline"], 3),
        **{f"{name}_img_s": round(v, 1) for name, v in medians.items() if name not in DEFAULT_VARIANTS},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
