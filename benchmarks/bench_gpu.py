"""GPU training step time: precision x memory format x torch.compile mode, synthetic inputs.

On a CUDA machine, from the repo root (needs only torch and torchvision):
    python -m benchmarks.bench_gpu --markdown                                  # full matrix, batch 8
    python -m benchmarks.bench_gpu --compile eager --batch-sizes 8,64,256      # eager only, fast
    python -m benchmarks.bench_gpu --compile reduce-overhead --precisions bf16
Smoke run anywhere (CI): python -m benchmarks.bench_gpu --cpu --steps 2 --warmup 1 --batch-sizes 2

One training step = what the Trainer does per micro-batch: input to channels_last when asked,
forward under autocast (bf16 / fp16), cross-entropy with label smoothing, backward (fp16 through a
GradScaler), unscale + clip to norm 1, AdamW step, zero_grad. Inputs are uint8 faces preprocessed once
on the device (no data loading), a few batches cycled so CUDA graphs copy fresh inputs like in training.
Only the model is compiled, as with `run.compile=true`. Each step is timed with CUDA events (on CPU:
perf_counter) after the warm-up steps (which include compilation); the table gives the median and
90th percentile step time and images/s = batch / median. At batch 8 the default EmotionNet launches
hundreds of small kernels per step, so launch overhead, not arithmetic, bounds eager mode; CUDA graphs
(mode="reduce-overhead") replay the whole compiled graph with one launch.

Full training step (`--full-step MODES`, default eager): a second table times what a training step
costs from the loader's tensors on: pinned uint8 faces and their augmentation parameter rows (drawn by
AugmentSampler beforehand, as the DataLoader workers do) copied to the device, BatchAugment there, then
the step above. At batch 8 that adds the copy and ~25 small augmentation kernels to the model's step.

Imports only torch, torchvision, numpy and emotionnet.model.emotionnet / emotionnet.data: no datasets,
MLflow, DeepSpeed or Accelerate needed on the CUDA machine.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from emotionnet.data.augment import AugmentSampler, BatchAugment
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import AugmentConfig
from emotionnet.model.emotionnet import EmotionNet, ModelConfig

PRECISIONS = ("fp32", "bf16", "fp16")
LAYOUTS = ("off", "on")  # channels_last
COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
INPUT_BATCHES = 4  # distinct input batches cycled through
NUM_CLASSES = ModelConfig().num_classes


@dataclass(frozen=True)
class Variant:
    batch: int
    precision: str
    channels_last: bool
    compile_mode: str
    full_step: bool = False  # from loader tensors (uint8 + parameter rows) through device augmentation

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
        return [
            str(v.batch),
            v.precision,
            v.compile_mode,
            "on" if v.channels_last else "off",
            f"{self.median_ms:.2f}" if measured else "-",
            f"{self.p90_ms:.2f}" if measured else "-",
            f"{self.images_per_s:,.0f}" if measured else "-",
            f"{self.warmup_s:.1f}" if measured else "-",
            f"{self.peak_mib:,.0f}" if self.peak_mib is not None else "-",
            self.note,
        ]


HEADER = ["batch", "precision", "compile", "channels_last", "median ms", "p90 ms", "img/s", "warm-up s",
          "peak MiB", "note"]  # fmt: skip


def make_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    variant: Variant,
    device: torch.device,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    dtype = AUTOCAST_DTYPES[variant.precision]

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        if variant.compile_mode == "reduce-overhead":
            # A new iteration: CUDA-graph outputs of the previous step may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        if variant.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def full_step(step: Callable, augment: BatchAugment, device: torch.device) -> Callable:
    """The training step from the loader's (pinned) tensors: copy, augment on the device, step."""

    def run(faces: torch.Tensor, params: torch.Tensor, labels: torch.Tensor) -> None:
        images = augment(faces.to(device, non_blocking=True), params.to(device, non_blocking=True))
        step(images, labels.to(device, non_blocking=True))

    return run


def synthetic_inputs(
    batch: int, device: torch.device, full_step: bool = False
) -> list[tuple[torch.Tensor, ...]]:
    """Preprocessed faces and labels on the device; with `full_step`, what the loader hands over instead:
    uint8 faces, parameter rows and labels in pinned host memory (CUDA) ."""
    pre = Preprocessing(input_size=ModelConfig().input_size)
    sampler = AugmentSampler(AugmentConfig(), pre, seed=0)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for i in range(INPUT_BATCHES):
        faces = torch.randint(0, 256, (batch, 1, 48, 48), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
        if not full_step:
            batches.append((pre(faces.to(device)), labels.to(device)))
            continue
        params = torch.from_numpy(sampler(0, np.arange(i * batch, (i + 1) * batch)))
        pinned = [t.pin_memory() if device.type == "cuda" else t for t in (faces, params, labels)]
        batches.append(tuple(pinned))
    return batches


def time_steps(step, inputs, steps: int, device: torch.device) -> list[float]:
    """Milliseconds of each step: CUDA events on the GPU, perf_counter on the CPU."""
    if device.type != "cuda":
        times = []
        for tensors in itertools.islice(itertools.cycle(inputs), steps):
            start = time.perf_counter()
            step(*tensors)
            times.append(1000.0 * (time.perf_counter() - start))
        return times
    events = []
    for tensors in itertools.islice(itertools.cycle(inputs), steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(*tensors)
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def run_variant(variant: Variant, steps: int, warmup: int, device: torch.device) -> Row:
    torch.manual_seed(0)
    model = EmotionNet().to(device).train()
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=variant.precision == "fp16")
    if variant.compile_mode != "eager":
        mode = None if variant.compile_mode == "default" else variant.compile_mode
        model = torch.compile(model, mode=mode)
    step = make_step(model, optimizer, scaler, variant, device)
    if variant.full_step:
        step = full_step(step, BatchAugment(AugmentConfig(), Preprocessing(ModelConfig().input_size)), device)
    inputs = synthetic_inputs(variant.batch, device, variant.full_step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    time_steps(step, inputs, warmup, device)  # compilation, CUDA-graph recording, allocator warm-up
    warmup_s = time.perf_counter() - start
    times = time_steps(step, inputs, steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Row(variant, times, warmup_s, peak)


def run_matrix(variants: list[Variant], steps: int, warmup: int, device: torch.device) -> list[Row]:
    rows = []
    for i, variant in enumerate(variants, 1):
        skip = variant.cpu_skip_reason() if device.type == "cpu" else None
        if skip is not None:
            rows.append(Row(variant, note=skip))
            continue
        print(f"[{i}/{len(variants)}] {variant}", file=sys.stderr, flush=True)
        try:
            rows.append(run_variant(variant, steps, warmup, device))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            # One failing mode (out of memory at batch 256, a compile backend error) must not lose the rest.
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            rows.append(Row(variant, note=f"failed: {type(err).__name__}: {first_line[:120]}"))
        finally:
            torch._dynamo.reset()  # every variant compiles afresh (and recompile limits never trip)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"


def plain_table(rows: list[Row]) -> str:
    table = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[c]) for line in table) for c in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table)


FULL_STEP_TITLE = "Full training step (loader tensors -> copy -> BatchAugment -> forward/backward/step):"


def markdown(rows: list[Row], command: str, device: torch.device, steps: int, warmup: int) -> str:
    now = datetime.datetime.now(datetime.UTC)
    lines = [
        f"Command: `{command}`",
        f"Device: {device_description(device)}; torch {torch.__version__}. Date: {now:%a %b %d %H:%M UTC %Y}.",
        f"Default EmotionNet, synthetic inputs on the device; {warmup} warm-up steps (compilation included "
        f"in warm-up s), median of {steps} timed steps.",
    ]
    for title, part in tables(rows):
        lines += ["", *([title, ""] if title else [])]
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "---:|" * 2 + "---|" * 3 + "---:|" * 4 + "---|"]
        lines += ["| " + " | ".join(r.cells()) + " |" for r in part]
    return "\n".join(lines) + "\n"


def tables(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """The model-only rows (untitled, first: scripts/gpu_check_report.py reads that table), then the
    full-step rows under their title."""
    model = [r for r in rows if not r.variant.full_step]
    full = [r for r in rows if r.variant.full_step]
    return [(title, part) for title, part in (("", model), (FULL_STEP_TITLE, full)) if part]


def csv_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return values

    return parse


def batch_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"comma-separated positive integers, got {text!r}")
    return values


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
    parser.add_argument(
        "--full-step",
        type=csv_list(COMPILE_MODES),
        default=["eager"],
        help="compile modes that also get a full-step row per batch size (first precision and layout)",
    )
    parser.add_argument("--cpu", action="store_true", help="smoke run on the CPU; CUDA-only variants skipped")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown section to paste")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if not args.cpu and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible; pass --cpu for a smoke run on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")

    variants = [
        Variant(batch, precision, layout == "on", mode)
        for batch in args.batch_sizes
        for mode in args.compile
        for precision in args.precisions
        for layout in args.channels_last
    ]
    variants += [
        Variant(batch, args.precisions[0], args.channels_last[0] == "on", mode, full_step=True)
        for batch in args.batch_sizes
        for mode in args.full_step
    ]
    rows = run_matrix(variants, args.steps, args.warmup, device)
    print(f"{device_description(device)}; torch {torch.__version__}")
    for title, part in tables(rows):
        print(f"\n{title}" if title else "", end="\n" if title else "")
        print(plain_table(part))
    if args.markdown:
        command = " ".join(["python -m benchmarks.bench_gpu", *(sys.argv[1:] if argv is None else argv)])
        print()
        print(markdown(rows, command, device, args.steps, args.warmup))
    return 1 if any(r.note.startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
