"""Training augmentation: torchvision's per-face ops vs the batched per-face-parameter path.

    python -m benchmarks.bench_augment                      # CUDA when present, else CPU; batches 8, 64, 256
    python -m benchmarks.bench_augment --device cpu --repeats 15
    python -m benchmarks.bench_augment --doc ''             # print only, leave docs/benchmarks.md alone

Both paths turn uint8 faces into the model's normalized input under the default AugmentConfig (flip,
rotation + translation + scale + shear, brightness/contrast, random erasing), with per-face parameters:

- per-face: what the DataLoader workers ran before augmentation was batched, one torchvision v2 call per face (each op
  draws one set of parameters per call), seeded per face, then Preprocessing on the batch and random
  erasing per face; on the device the faces are on.
- batched: `AugmentSampler` on the host (each face's parameters from (seed, epoch, row_id); the workers'
  part), the parameter rows copied to the device, `BatchAugment` there (one grid_sample for the batch).
  "device ms" is BatchAugment alone per batch, what the training step waits for.
- kornia (only when importable): kornia.augmentation with the same ops and ranges, same_on_batch=False
  (its own per-sample draws from torch's global generator; no per-face seeds).

Each round times every path over the same batches, round after round, so load changes on a shared machine
hit all paths alike; the table gives the median faces/s over rounds. CUDA timings synchronize once per
round. The last line printed is one JSON object for batch 8 (the GPU check reads it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import v2

from benchmarks.report import batch_list, publish
from emotionnet.data.augment import AugmentSampler, BatchAugment
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import AugmentConfig
from emotionnet.train.environment import cpu_model

SECTION = "## Augmentation: per-face vs batched"
TARGET_RATIO_CPU = 10.0  # batch 8, same process
TARGET_DEVICE_MS_CUDA = 0.3  # batch 8
IMAGE = 48


def per_face_transform(cfg: AugmentConfig, pre: Preprocessing) -> Callable:
    """The per-face path training used before augmentation was batched (torchvision v2, one call per face)."""
    augment = v2.Compose(
        [
            v2.RandomHorizontalFlip(cfg.hflip_p),
            v2.RandomAffine(
                degrees=cfg.rotation_degrees,
                translate=(cfg.affine_translate, cfg.affine_translate),
                scale=cfg.affine_scale,
                shear=cfg.affine_shear,
                interpolation=v2.InterpolationMode.BILINEAR,
            ),
            v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
        ]
    )
    erase = v2.RandomErasing(p=cfg.erasing_p, scale=cfg.erasing_scale, value=0)

    def run(faces: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        out = []
        with torch.random.fork_rng(devices=[]):
            for face, seed in zip(faces, seeds, strict=True):
                torch.manual_seed(seed)
                out.append(augment(face))
            batch = pre(torch.stack(out))
            for i, seed in enumerate(seeds):
                torch.manual_seed(seed + 1)
                batch[i] = erase(batch[i])
        return batch

    return run


def kornia_transform(cfg: AugmentConfig, pre: Preprocessing, device: torch.device) -> Callable | None:
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    stats = torch.tensor([pre.mean], device=device), torch.tensor([pre.std], device=device)
    lo, hi = cfg.affine_scale or (1.0, 1.0)
    sequence = K.AugmentationSequential(
        K.RandomHorizontalFlip(p=cfg.hflip_p),
        K.RandomAffine(
            cfg.rotation_degrees,
            (cfg.affine_translate,) * 2,
            (lo, hi),
            (-cfg.affine_shear, cfg.affine_shear, 0.0, 0.0),
            p=1.0,
        ),  # fmt: skip
        K.ColorJiggle(brightness=cfg.brightness, contrast=cfg.contrast, p=1.0),
        K.Normalize(mean=stats[0], std=stats[1]),
        K.RandomErasing(scale=cfg.erasing_scale, p=cfg.erasing_p, value=0.0),
        same_on_batch=False,
    )
    return lambda faces: sequence(faces.float() / 255)


@dataclass
class Row:
    batch: int
    rates: dict[str, list[float]] = field(default_factory=dict)  # path -> faces/s per round
    device_ms: list[float] = field(default_factory=list)  # BatchAugment alone, ms per batch
    sampler_ms: list[float] = field(default_factory=list)  # AugmentSampler alone, ms per batch

    def rate(self, path: str) -> float | None:
        return statistics.median(self.rates[path]) if self.rates.get(path) else None


def _timed(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Seconds per call over `iters` calls (CUDA: synchronized before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def measure(batch: int, device: torch.device, rounds: int, seconds: float, with_kornia: bool) -> Row:
    cfg, pre = AugmentConfig(), Preprocessing()
    generator = torch.Generator().manual_seed(batch)
    faces_cpu = torch.randint(0, 256, (batch, 1, IMAGE, IMAGE), dtype=torch.uint8, generator=generator)
    faces = faces_cpu.to(device)
    row_ids = np.arange(batch) + 2
    seeds = list(range(batch))
    sampler, augment = AugmentSampler(cfg, pre, seed=0), BatchAugment(cfg, pre)
    params = torch.from_numpy(sampler(0, row_ids)).to(device)
    per_face = per_face_transform(cfg, pre)
    paths: dict[str, Callable[[], object]] = {
        "per-face": lambda: per_face(faces, seeds),
        # The workers' part (sampler, on the host) plus the copy and the device's part.
        "batched": lambda: augment(
            faces, torch.from_numpy(sampler(0, row_ids)).to(device, non_blocking=True)
        ),
    }
    kornia = kornia_transform(cfg, pre, device) if with_kornia else None
    if kornia is not None:
        paths["kornia"] = lambda: kornia(faces)
    extra = {"device": lambda: augment(faces, params), "sampler": lambda: sampler(0, row_ids)}
    # Calls per round: about `seconds` for each path (a first timing sizes it).
    iters = {}
    for name, fn in {**paths, **extra}.items():
        fn()
        iters[name] = max(1, int(seconds / max(_timed(fn, 2, device), 1e-6)))
    row = Row(batch, {name: [] for name in paths})
    for _ in range(rounds):
        for name, fn in paths.items():
            row.rates[name].append(batch / _timed(fn, iters[name], device))
        row.device_ms.append(1000 * _timed(extra["device"], iters["device"], device))
        row.sampler_ms.append(1000 * _timed(extra["sampler"], iters["sampler"], device))
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    return f"{os.cpu_count()}-core CPU ({cpu_model()}), {torch.get_num_threads()} torch threads"


def report(
    command: str,
    rows: list[Row],
    device: torch.device,
    rounds: int,
    seconds: float,
    load: tuple[float, float],
) -> str:
    kornia = any(r.rate("kornia") for r in rows)
    lines = [
        SECTION + f", {device.type}",
        "",
        f"Command: `{command}`",
        f"Device: {device_name(device)}; torch {torch.__version__}; load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end. Date: {datetime.datetime.now(datetime.UTC):%a %b %d %H:%M UTC %Y}.",
        f"Default AugmentConfig; faces/s are medians over {rounds} rounds (each path ~{seconds:g} s per round, the "
        "paths alternating). batched = AugmentSampler (host) + copy + BatchAugment (device); device ms = "
        "BatchAugment alone per batch; sampler ms = the host part alone (in training: the DataLoader worker).",
        "",
        "| batch | per-face faces/s | batched faces/s | ratio | device ms | sampler ms |"
        + (" kornia faces/s |" if kornia else ""),
        "|---:|---:|---:|---:|---:|---:|" + ("---:|" if kornia else ""),
    ]
    for r in rows:
        per_face, batched = r.rate("per-face"), r.rate("batched")
        cells = [
            str(r.batch),
            f"{per_face:,.0f}",
            f"{batched:,.0f}",
            f"{batched / per_face:.1f}x",
            f"{statistics.median(r.device_ms):.3f}",
            f"{statistics.median(r.sampler_ms):.3f}",
        ]
        if kornia:
            cells.append(f"{r.rate('kornia'):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    eight = next((r for r in rows if r.batch == 8), None)
    if eight is not None and device.type == "cpu":
        ratio = eight.rate("batched") / eight.rate("per-face")
        verdict = "met" if ratio >= TARGET_RATIO_CPU else "MISSED"
        lines.append(
            f"Target (CPU, batch 8): batched >= {TARGET_RATIO_CPU:.0f}x per-face: {ratio:.1f}x, **{verdict}**."
        )
    elif eight is not None:
        device_ms = statistics.median(eight.device_ms)
        verdict = "met" if device_ms <= TARGET_DEVICE_MS_CUDA else "MISSED"
        lines.append(
            f"Target (GPU, batch 8): augmentation <= {TARGET_DEVICE_MS_CUDA} ms: {device_ms:.3f} ms, **{verdict}**."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--batch-sizes", type=batch_list, default=[8, 64, 256])
    parser.add_argument("--rounds", type=int, default=9, help="rounds per batch size (median of these)")
    parser.add_argument("--seconds", type=float, default=0.2, help="time per path per round")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (CPU); DataLoader workers use 1"
    )
    parser.add_argument("--no-kornia", action="store_true", help="skip kornia even when it is installed")
    parser.add_argument("--doc", default="docs/benchmarks.md", help="markdown file to update ('' to skip)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be >= 1 and --seconds > 0")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_augment: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    rows = []
    for batch in args.batch_sizes:
        print(f"batch {batch}: {args.rounds} rounds", file=sys.stderr, flush=True)
        rows.append(measure(batch, device, args.rounds, args.seconds, not args.no_kornia))
    command = " ".join(["python -m benchmarks.bench_augment", *(sys.argv[1:] if argv is None else argv)])
    publish(
        report(command, rows, device, args.rounds, args.seconds, (load_start, os.getloadavg()[0])), args.doc
    )
    eight = next((r for r in rows if r.batch == 8), rows[0])
    per_face, batched = eight.rate("per-face"), eight.rate("batched")
    summary = {
        "batch": eight.batch,
        "device": device.type,
        "per_face_faces_s": round(per_face, 1),
        "batched_faces_s": round(batched, 1),
        "ratio": round(batched / per_face, 2),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
