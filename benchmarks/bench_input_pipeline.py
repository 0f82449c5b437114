"""Input pipeline alone: Arrow shards -> augmented batches of 8, vs. what training consumes.

    python -m benchmarks.bench_input_pipeline                             # synthetic, FER2013-sized
    python -m benchmarks.bench_input_pipeline --data-dir dataset/fer2013  # the real prepared FER2013

Measures images/s of the training DataLoader (batched Arrow reads of uint8 faces, each face's
augmentation parameters, collation: the workers' whole job since augmentation was batched) for 0, 1 and 2 workers, the
same plus BatchAugment in the main process (what train_step adds on a CPU; on a GPU that part runs
there), and the images/s one CPU training step
of the default EmotionNet consumes at batch 8. The target: pipeline images/s per worker >= 5x
the training rate. Results go to docs/benchmarks.md, section "## Input pipeline".
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm import tqdm

from benchmarks.report import benchmark_parser, machine_line, publish
from data_prep.prepare import prepare
from data_prep.schema import IMAGE_SIZE, NUM_CLASSES
from data_prep.synth import write_synthetic_csv
from emotionnet.data.augment import AugmentSampler, BatchAugment
from emotionnet.data.loaders import DataConfig, DatasetNotPreparedError, create_loader, load_splits
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import AugmentConfig

BATCH = 8
TARGET_RATIO = 5.0
# Assumed GPU step time for the default EmotionNet at batch 8 (fwd + bwd + AdamW, bf16): a few ms on an
# H100, where kernel-launch overhead dominates. Not measured here (no GPU); replace with the GPU benchmark.
GPU_STEP_MS = (2.0, 4.0)
SECTION = "## Input pipeline"


@dataclass
class Row:
    name: str
    workers: int
    images_per_s: float

    @property
    def per_worker(self) -> float:
        return self.images_per_s / max(self.workers, 1)


def synthetic_prepared(rows: int, root: Path) -> Path:
    """The real prep stage run on data_prep's synthetic FER2013-format CSV: shards exactly as training reads them."""
    csv = write_synthetic_csv(root / "synthetic.csv", rows, seed=0, progress=True)
    out = root / "prepared"
    prepare(csv, out)
    csv.unlink()  # the shards are all the benchmark reads; free the disk
    return out


def pipeline_rate(
    name: str, split: datasets.Dataset, augment: AugmentConfig | None, workers: int, batches: int, apply: bool
) -> Row:
    """Batches from the loader; with `apply`, augmented (`augment` None: preprocessed) in this process."""
    cfg = DataConfig(num_workers=workers, persistent_workers=True)
    pre = Preprocessing()
    sampler = AugmentSampler(augment, pre, seed=0) if augment is not None else None
    on_cpu = BatchAugment(augment or AugmentConfig(), pre)
    loader = create_loader(split, BATCH, shuffle=True, drop_last=True, cfg=cfg, seed=0, augment=sampler)
    warmup = max(2 * workers * cfg.prefetch_factor, 5)  # worker start-up and first prefetch excluded
    if len(loader) < warmup + batches:
        raise SystemExit(f"the train split has {len(loader)} batches of {BATCH}; need {warmup + batches}")
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in tqdm(range(batches), desc=f"{name}, {workers} workers", leave=False):
        batch = next(it)
        if apply:
            on_cpu(batch["pixel_values"], batch.get("augment"))
    rate = batches * BATCH / (time.perf_counter() - start)
    del it, loader
    return Row(name, workers, rate)


def training_rate(steps: int) -> float:
    """Images/s of one CPU process running full training steps of the default EmotionNet at batch 8."""
    from emotionnet.model.emotionnet import EmotionNet

    model = EmotionNet().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, 1, IMAGE_SIZE, IMAGE_SIZE)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc="training steps", leave=False):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def report(args, rows: list[Row], train_rate: float | None, source: str, load: tuple[float, float]) -> str:
    # The single-worker row is one dedicated process doing all the work: the fairest per-worker figure.
    train_rows = [r for r in rows if r.name == "train"]
    per_worker = next(
        (r.per_worker for r in train_rows if r.workers == 1), max(r.per_worker for r in train_rows)
    )
    gpu_lo, gpu_hi = (BATCH * 1000 / ms for ms in reversed(GPU_STEP_MS))
    lines = [
        SECTION,
        "",
        f"Command: `{' '.join(['python -m benchmarks.bench_input_pipeline', *args])}`",
        machine_line(load, f"torch {torch.__version__}", f"torch threads {torch.get_num_threads()}"),
        f"Data: {source}. Batch {BATCH}, default AugmentConfig (flip, rotation+affine in one warp, "
        "brightness/contrast, random erasing), Preprocessing to 48 px. train = the DataLoader alone (uint8 "
        "faces + augmentation parameters); the rows with BatchAugment / Preprocessing add what the main "
        "process does with a batch on a CPU.",
        "",
        "| pipeline | workers | images/s | images/s per worker |",
        "|---|---:|---:|---:|",
        *(f"| {r.name} | {r.workers} | {r.images_per_s:,.0f} | {r.per_worker:,.0f} |" for r in rows),
        "",
    ]
    if train_rate is None:
        lines.append("Training consumption: not measured (--skip-model).")
    else:
        ratio = per_worker / train_rate
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        lines.append(
            f"Training consumption, one CPU process, default EmotionNet, fwd+bwd+AdamW at batch {BATCH}: "
            f"{train_rate:,.1f} images/s. Pipeline (1 worker) / training = {ratio:,.0f}x "
            f"(target >= {TARGET_RATIO:.0f}x): **{verdict}**."
        )
    lines.append("")
    workers_needed = [int(np.ceil(rate / per_worker)) for rate in (gpu_lo, gpu_hi)]
    lines.append(
        f"GPU: assuming a {GPU_STEP_MS[0]:g}-{GPU_STEP_MS[1]:g} ms training step at batch {BATCH} (H100-class, "
        f"not measured here), one GPU consumes {gpu_lo:,.0f}-{gpu_hi:,.0f} images/s. At {per_worker:,.0f} "
        f"images/s per worker that takes {workers_needed[0]}-{workers_needed[1]} workers per GPU (the default "
        f"`num_workers: 4` gives {4 * per_worker:,.0f} images/s, "
        f"{'enough' if 4 * per_worker >= gpu_hi else 'NOT enough'} for the fast end), assuming a free "
        "CPU core per worker; per-worker rates on a busy 2-core machine understate a dedicated core."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--data-dir", help="a prepared dataset (emotionnet-prep output); default: synthetic")
    # 80% of the synthetic CSV is Training: 35,887 rows (FER2013's total) give its 28,709 train rows.
    parser.add_argument("--rows", type=int, default=35_887, help="synthetic CSV rows, all splits")
    parser.add_argument("--batches", type=int, default=300, help="timed batches per configuration")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--skip-model", action="store_true", help="do not time the EmotionNet training step")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else synthetic_prepared(args.rows, Path(tmp))
        try:
            splits = load_splits(data_dir)
        except DatasetNotPreparedError as err:
            print(f"error: {err}")
            return 2
        if "train" not in splits:
            print(f"error: {data_dir} has no train split")
            return 2
        train = splits["train"]
        origin = args.data_dir or "data_prep's synthetic CSV through the prep stage"
        source = f"{origin}, train split ({len(train):,} rows, memory-mapped)"
        rows = [pipeline_rate("train", train, AugmentConfig(), w, args.batches, apply=False) for w in workers]
        rows.append(
            pipeline_rate("train + BatchAugment on the CPU", train, AugmentConfig(), 0, args.batches, True)
        )
        rows.append(
            pipeline_rate("eval + Preprocessing on the CPU", train, None, 0, args.batches, apply=True)
        )
    train_rate = None if args.skip_model else training_rate(args.steps)

    load = (load_start, os.getloadavg()[0])
    section = report(sys.argv[1:] if argv is None else argv, rows, train_rate, source, load)
    publish(section, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
