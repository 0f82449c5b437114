"""Ablations at an equal budget: every variant trains the same number of steps on the same data and seed.

    OMP_NUM_THREADS=1 python scripts/ablations.py --steps 3000 --jobs 2 [--only full,backbone]

Each variant is `emotionnet-train --config configs/train/fer2013_cpu.yaml` with the overrides listed in
VARIANTS, run as one process (one compute thread; `--jobs` run side by side, one per core) with a single
cosine cycle that ends at `--steps`. Prints a markdown table of best PublicTest (validation) accuracy and
macro-F1, the wall time of each run and its exact command; results/ablations.json keeps the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/train/fer2013_cpu.yaml"
TRAIN_ROWS, BATCH, WARMUP = 28_709, 32, 300

NO_ATTENTION = ["model.channel_attention=false", "model.spatial_attention=false", "model.transformer=false"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "backbone": ("EfficientNet-B0 stages 1-5 + pooling + head", NO_ATTENTION),
    "channel": ("+ channel attention", ["model.spatial_attention=false", "model.transformer=false"]),
    "spatial": ("+ spatial self-attention", ["model.channel_attention=false", "model.transformer=false"]),
    "transformer": (
        "+ transformer encoder",
        ["model.channel_attention=false", "model.spatial_attention=false"],
    ),
    "full": ("full EmotionNet (all three)", []),
    "stride8": ("full, output stride 8 (48 px seen as 96 px: 6x6 map)", ["model.output_stride=8"]),
    "input64": ("full, faces resized to 64 px (4x4 map)", ["model.input_size=64"]),
    # The recipe's training tricks, each taken away (or, for batch mixing, added) on the full model.
    "no_ema": ("full, no weight EMA", ["optim.ema_decay=0"]),
    "flip_only": (
        "full, flip-only augmentation (no affine, jitter, erasing)",
        [
            "augment.rotation_degrees=0",
            "augment.affine_translate=0",
            "augment.affine_scale=null",
            "augment.affine_shear=0",
            "augment.brightness=0",
            "augment.contrast=0",
            "augment.erasing_p=0",
        ],
    ),  # fmt: skip
    "no_smoothing": ("full, no label smoothing", ["loss.label_smoothing=0"]),
    "balanced": ("full, class-balanced loss weights (Disgust x9.4)", ["loss.class_weights=balanced"]),
    "mixing": ("full, + MixUp 0.2 / CutMix 1.0", ["augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0"]),
}


def command(name: str, steps: int, output_dir: str) -> list[str]:
    cycle_epochs = (steps - WARMUP) / (TRAIN_ROWS // BATCH)
    return [
        "emotionnet-train", "--config", CONFIG, "--run_name", f"ablation-{name}",
        f"run.output_dir={output_dir}", f"run.max_steps={steps}", "run.num_epochs=100", "run.eval_tta=none",
        f"schedule.warmup_steps={WARMUP}", f"schedule.cycle_epochs={cycle_epochs:.4f}",
        "schedule.snapshot_ensemble=false", "tracking.enabled=false",
        *VARIANTS[name][1],
    ]  # fmt: skip


def run_variant(name: str, steps: int, output_dir: str) -> dict:
    cmd = command(name, steps, output_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    records = (REPO_ROOT / output_dir / f"ablation-{name}" / "metrics.jsonl").read_text().splitlines()
    validation = [r for r in map(json.loads, records) if r["split"] == "validation"]
    best = max(validation, key=lambda r: r["validation/accuracy"])
    return {
        "name": name,
        "what": VARIANTS[name][0],
        "accuracy": best["validation/accuracy"],
        "macro_f1": best["validation/macro_f1"],
        "best_step": best["step"],
        "wall_minutes": wall / 60,
        "command": "OMP_NUM_THREADS=1 " + shlex.join(cmd),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per variant (batch 32)")
    parser.add_argument("--jobs", type=int, default=2, help="variants trained side by side")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--output-dir", default="outputs/ablations")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda n: run_variant(n, args.steps, args.output_dir), names))
    out = REPO_ROOT / args.output_dir / "ablations.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| variant | PublicTest acc | macro-F1 | wall (min) |\n| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['what']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['wall_minutes']:.1f} |")
    print()
    for r in results:
        print(f"- {r['name']}: `{r['command']}`")
    print(f"\nraw figures: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
