"""GPU training step time: the real `Trainer.train_step`, precision x memory format x torch.compile mode.

On a CUDA machine, from the repo root (the installed project: the Trainer needs Accelerate and datasets):
    python -m benchmarks.bench_gpu --markdown                                  # full matrix, batch 8
    python -m benchmarks.bench_gpu --compile eager --batch-sizes 8,64,256      # eager only, fast
    python -m benchmarks.bench_gpu --compile reduce-overhead --precisions bf16
    python -m benchmarks.bench_gpu --override run.compile_backend=aot_eager    # any recipe setting
Smoke run anywhere (CI): python -m benchmarks.bench_gpu --cpu --steps 2 --warmup 1 --batch-sizes 2

Each variant is the recipe (`--recipe`, default `fer2013`: its model, augmentation, loss, AdamW and
schedule) plus `data.batch_size`, `run.mixed_precision` (fp32 = "no", bf16, fp16), `run.channels_last`
and `run.compile` / `run.compile_mode` (eager = no compilation), then any `--override`. One worker
process per variant (Accelerate's state and dynamo are process-global) builds the Trainer as training
does (`build_accelerator`, prepared loader with its workers) on synthetic FER-format faces through the
prep stage, and times what the training loop does per micro-batch: `next(loader)` (the batch of pinned
uint8 faces and augmentation parameter rows the loader's workers made, copied to the device by
Accelerate) + `Trainer.train_step` (BatchAugment on the device, channels_last, forward under autocast,
the recipe's loss, backward through Accelerate (fp16: GradScaler), clip, optimizer step, scheduler).
Under `reduce-overhead` each step starts with `torch.compiler.cudagraph_mark_step_begin()`. Each step is
timed with CUDA events (on CPU: perf_counter) after the warm-up steps (which include compilation and
CUDA-graph recording); the table gives the median and 90th percentile step time, images/s = batch /
median and the peak allocated memory. A variant that fails (out of memory, compile error) is reported
in its row (the worker's last error line) and the rest still run. At batch 8 the EmotionNet step
launches hundreds of small kernels, so launch overhead, not arithmetic, bounds eager mode; CUDA graphs
(mode="reduce-overhead") replay the whole compiled graph with one launch.

--cpu runs the workers without CUDA and their loader in the main process (data.num_workers=0); fp16 and
compiled variants are listed as skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import trainer_steps
from benchmarks.report import batch_list

RECIPE = "fer2013"
PRECISIONS = ("fp32", "bf16", "fp16")
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # run.mixed_precision
LAYOUTS = ("off", "on")  # channels_last
COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
CPU_OVERRIDES = ["data.num_workers=0"]  # --cpu: a smoke run, no loader worker processes


@dataclass(frozen=True)
class Variant:
    batch: int
    precision: str
    channels_last: bool
    compile_mode: str

    def overrides(self) -> list[str]:
        """The recipe settings this variant sets."""
        compiled = self.compile_mode != "eager"
        return [
            f"data.batch_size={self.batch}",
            f"run.mixed_precision={MIXED_PRECISION[self.precision]}",
            f"run.channels_last={str(self.channels_last).lower()}",
            f"run.compile={str(compiled).lower()}",
            *([f"run.compile_mode={self.compile_mode}"] if compiled else []),
        ]

    def cpu_skip_reason(self) -> str | None:
        """Why --cpu does not run this variant (None: it runs)."""
        if self.precision == "fp16":
            return "skipped on CPU: fp16 autocast + GradScaler is the CUDA path"
        if self.compile_mode != "eager":
            return "skipped on CPU: torch.compile rows are for the GPU run (minutes to compile here)"
        return None


@dataclass
class Row:
    variant: Variant
    step_ms: list[float] | None = None
    warmup_s: float | None = None
    peak_mib: float | None = None
    note: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_ms)

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.step_ms)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]

    @property
    def images_per_s(self) -> float:
        return self.variant.batch * 1000.0 / self.median_ms

    def cells(self) -> list[str]:
        v = self.variant
        measured = self.step_ms is not None
        rate = self.images_per_s if measured else 0.0
        return [
            str(v.batch),
            v.precision,
            v.compile_mode,
            "on" if v.channels_last else "off",
            f"{self.median_ms:.2f}" if measured else "-",
            f"{self.p90_ms:.2f}" if measured else "-",
            # Whole images/s; 3 significant digits below 100 (a CPU smoke run's seconds-long steps).
            ("-" if not measured else f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"),
            f"{self.warmup_s:.1f}" if measured else "-",
            f"{self.peak_mib:,.0f}" if self.peak_mib is not None else "-",
            self.note,
        ]


# scripts/gpu_check_report.py reads the plain table by these names.
HEADER = ["batch", "precision", "compile", "channels_last", "median ms", "p90 ms", "img/s", "warm-up s",
          "peak MiB", "note"]  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    """One variant in this process: print {"step_ms": [...], "warmup_s": ..., "peak_mib": ...} last."""
    trainer = trainer_steps.build_trainer(args.recipe, Path(args.data), Path(args.out), args.overrides)
    device = trainer.accelerator.device
    batches = iter(trainer.parts.train_loader)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    # Compilation, CUDA-graph recording, the loader's workers and the allocator warm up here.
    trainer_steps.time_steps(trainer, batches, args.warmup)
    warmup_s = time.perf_counter() - start
    step_ms = trainer_steps.time_steps(trainer, batches, args.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    print(json.dumps({"step_ms": step_ms, "warmup_s": warmup_s, "peak_mib": peak}))


def shared_overrides(args: argparse.Namespace) -> list[str]:
    """The settings every variant gets after its own: --cpu's, then --override's."""
    return [*(CPU_OVERRIDES if args.cpu else []), *args.overrides]


def run_variant(variant: Variant, args: argparse.Namespace, data: Path) -> Row:
    overrides = [*variant.overrides(), *shared_overrides(args)]
    with tempfile.TemporaryDirectory() as out:
        worker_args = [
            "--recipe", args.recipe, "--data", str(data), "--out", out,
            "--steps", str(args.steps), "--warmup", str(args.warmup),
            *[f"--override={o}" for o in overrides],
        ]  # fmt: skip
        try:
            hide_gpu = {"CUDA_VISIBLE_DEVICES": ""} if args.cpu else None  # --cpu on a CUDA machine
            result = trainer_steps.run_worker("benchmarks.bench_gpu", worker_args, hide_gpu)
        except trainer_steps.WorkerError as err:
            # One failing mode (out of memory at batch 256, a compile backend error) must not lose the rest.
            print(err.stderr[-3000:], file=sys.stderr)
            return Row(variant, note=f"failed: {str(err)[:120]}")
    return Row(variant, result["step_ms"], result["warmup_s"], result["peak_mib"])


def run_matrix(variants: list[Variant], args: argparse.Namespace) -> list[Row]:
    runs = [v for v in variants if not (args.cpu and v.cpu_skip_reason())]
    rows = {v: Row(v, note=v.cpu_skip_reason()) for v in variants if v not in runs}
    if runs:
        with tempfile.TemporaryDirectory() as tmp:
            # Enough training faces for every step of the largest batch without an epoch's end (and the
            # loader's one batch of lookahead).
            train_rows = (args.warmup + args.steps + 2) * max(v.batch for v in runs)
            data = trainer_steps.synthetic_data(Path(tmp), train_rows)
            for i, variant in enumerate(runs, 1):
                print(f"[{i}/{len(runs)}] {variant}", file=sys.stderr, flush=True)
                rows[variant] = run_variant(variant, args, data)
    return [rows[v] for v in variants]


def device_description(cpu: bool) -> str:
    if not cpu:
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"


def plain_table(rows: list[Row]) -> str:
    table = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[c]) for line in table) for c in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table)


def markdown(rows: list[Row], command: str, args: argparse.Namespace) -> str:
    now = datetime.datetime.now(datetime.UTC)
    settings = "".join(f" `{o}`" for o in shared_overrides(args))
    lines = [
        f"Command: `{command}`",
        f"Device: {device_description(args.cpu)}; torch {torch.__version__}. "
        f"Date: {now:%a %b %d %H:%M UTC %Y}.",
        f"Recipe `{args.recipe}`{settings}, synthetic FER-format faces through the prep stage; "
        f"`next(loader)` + `Trainer.train_step` per step, {args.warmup} warm-up steps (compilation "
        f"included in warm-up s), median of {args.steps} timed steps.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---:|" * 2 + "---|" * 3 + "---:|" * 4 + "---|",
        *("| " + " | ".join(r.cells()) + " |" for r in rows),
    ]
    return "\n".join(lines) + "\n"


def csv_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return values

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--batch-sizes", type=batch_list, default=[8], help="per-device batches, e.g. 8,64,256"
    )
    parser.add_argument("--precisions", type=csv_list(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--channels-last", type=csv_list(LAYOUTS), default=list(LAYOUTS), help="off,on")
    parser.add_argument("--compile", type=csv_list(COMPILE_MODES), default=list(COMPILE_MODES))
    parser.add_argument("--steps", type=int, default=100, help="timed steps per variant (median of these)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation included)")
    parser.add_argument("--recipe", default=RECIPE, help="recipe name or YAML path the variants start from")
    parser.add_argument(
        "--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a setting for every variant, after the variant's own (repeatable)",
    )  # fmt: skip
    parser.add_argument("--cpu", action="store_true", help="smoke run on the CPU; CUDA-only variants skipped")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown section to paste")
    trainer_steps.add_worker_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if not args.cpu and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible; pass --cpu for a smoke run on the CPU", file=sys.stderr)
        return 2

    variants = [
        Variant(batch, precision, layout == "on", mode)
        for batch in args.batch_sizes
        for mode in args.compile
        for precision in args.precisions
        for layout in args.channels_last
    ]
    rows = run_matrix(variants, args)
    print(f"{device_description(args.cpu)}; torch {torch.__version__}")
    print(plain_table(rows))
    if args.markdown:
        command = " ".join(["python -m benchmarks.bench_gpu", *(sys.argv[1:] if argv is None else argv)])
        print()
        print(markdown(rows, command, args))
    return 1 if any(r.note.startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
