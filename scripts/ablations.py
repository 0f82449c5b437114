"""Ablations of the CPU recipe: every row is one training run, recorded as an MLflow run tagged
`ablation=<row>` and `seed=<n>`, and the tool writes the table (markdown) of all rows.

    OMP_NUM_THREADS=1 python scripts/ablations.py --data /tmp/fer_prepared --steps 900 --seeds 0,1 \
        --jobs 2 --only base,sgd,restarts
    OMP_NUM_THREADS=1 python scripts/ablations.py --data /tmp/fer_prepared --minutes 6 --only backbone,full

Each row is `emotionnet-train --config configs/train/fer2013_cpu.yaml` plus the shared overrides below
and the row's own (ROWS), as one process with one compute thread and no loader workers; `--jobs` runs
train side by side (one per core), row by row in the order given, each row's seeds together. The budget
is equal steps (`--steps`: one warm-up + cosine ending at the
last step) or equal wall time (`--minutes`: the recipe's time budget, which fixes the step count after
timing the warm-up). The table gives each row's best validation (PublicTest) accuracy and macro-F1 per
seed, the steps, wall minutes and the load average while it ran; `<output-dir>/ablations.md` and
`ablations.json` keep it, the MLflow store under `<output-dir>` every run (`emotionnet-mlflow-ui`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/train/fer2013_cpu.yaml"
WARMUP_FRACTION = 0.1  # of the steps of an equal-step row

NO_ATTENTION = ["model.channel_attention=false", "model.spatial_attention=false", "model.transformer=false"]
# The augmentation the previous recipe used (docs/results.md, previous architecture).
HEAVY_AUGMENT = [
    "augment.rotation_degrees=10", "augment.affine_translate=0.1", "augment.affine_scale=[0.9,1.1]",
    "augment.affine_shear=5", "augment.brightness=0.2", "augment.contrast=0.2", "augment.erasing_p=0.25",
    "augment.random_resized_crop=null",
]  # fmt: skip
ROWS: dict[str, tuple[str, list[str]]] = {
    # Architecture (the recipe's training otherwise).
    "backbone": ("EfficientNet-B0 stages 1-5, pooled, head (no added stage)", NO_ATTENTION),
    "full": ("full EmotionNet, stride 16 (3x3 map), LayerScale stages, pooled readout", []),
    "full_os8": (
        "full, output stride 8 from stage 4 on (6x6 map)",
        ["model.output_stride=8", "model.stride_reduction=late"],
    ),
    "backbone_os8": (
        "backbone alone, output stride 8 from stage 4 on (6x6 map)",
        [*NO_ATTENTION, "model.output_stride=8", "model.stride_reduction=late"],
    ),
    "legacy": (
        "full, previous architecture (no gains, class-token readout)",
        ["model.layer_scale=null", "model.readout=cls"],
    ),
    # Training levers, each changed alone on the recipe.
    "base": ("the recipe (full model, AdamW, one cosine)", []),
    "sgd": (
        "SGD + Nesterov 0.9, lr 0.05, weight decay 5e-4",
        ["optim.name=sgd", "optim.lr=0.05", "optim.weight_decay=5e-4"],
    ),  # fmt: skip
    "restarts": ("cosine with warm restarts (3 cycles, x2 each)", ["schedule.name=restarts"]),
    "no_smoothing": ("no label smoothing", ["loss.label_smoothing=0"]),
    "smoothing": ("label smoothing 0.1", ["loss.label_smoothing=0.1"]),
    "sqrt_weights": ("square-root class weights (Disgust x3.1)", ["loss.class_weights=sqrt"]),
    "logit_adjust": ("logit adjustment, tau 1 (balanced softmax)", ["loss.logit_adjustment=1.0"]),
    "heavy_augment": ("the previous recipe's augmentation (affine, jitter 0.2, erasing)", HEAVY_AUGMENT),
    "flip_only": (
        "flip only (no crops, no photometric)",
        [
            "augment.random_resized_crop=null",
            "augment.affine_translate=0",
            "augment.affine_scale=null",
            "augment.rotation_degrees=0",
            "augment.affine_shear=0",
            "augment.brightness=0",
            "augment.contrast=0",
            "augment.erasing_p=0",
        ],
    ),  # fmt: skip
    "ema": ("weight EMA 0.999 for validation", ["optim.ema_decay=0.999"]),
}


def budget_overrides(args: argparse.Namespace) -> list[str]:
    if args.minutes is not None:
        return [f"run.time_budget_min={args.minutes}", f"schedule.warmup_steps={args.warmup}"]
    warmup = max(1, round(args.steps * WARMUP_FRACTION))
    return [f"schedule.budget_steps={args.steps}", "run.time_budget_min=null", f"schedule.warmup_steps={warmup}"]


def restart_cycles(steps: int | None, train_rows: int, batch: int) -> list[str]:
    """Three cosine cycles (1 : 2 : 4) after the warm-up that end on the last step of an equal-step row."""
    if steps is None:
        return []
    warmup = max(1, round(steps * WARMUP_FRACTION))
    cycle_epochs = (steps - warmup) / 7 / (train_rows // batch)
    return [f"schedule.cycle_epochs={cycle_epochs:.6f}", "schedule.cycle_mult=2"]


def command(args: argparse.Namespace, row: str, seed: int) -> list[str]:
    extra = restart_cycles(args.steps, args.train_rows, args.batch) if row == "restarts" else []
    return [
        "emotionnet-train", "--config", CONFIG, "--run_name", f"{row}-s{seed}",
        f"data.data_dir={args.data}", "data.num_workers=0", f"run.output_dir={args.output_dir}",
        f"run.seed={seed}", "run.eval_tta=none", "schedule.snapshot_ensemble=false",
        "checkpoint.every_steps=100000", "checkpoint.keep_last=1",
        *budget_overrides(args),
        "tracking.experiment=ablations", "tracking.system_metrics=false", "tracking.log_model=false",
        f"tracking.tags.ablation={row}", f"tracking.tags.seed='{seed}'",
        *ROWS[row][1], *extra,
    ]  # fmt: skip


def run_row(args: argparse.Namespace, row: str, seed: int) -> dict:
    cmd = command(args, row, seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"row {row} seed {seed} failed ({done.returncode}):\n{log.read()[-3000:]}")
    wall = time.monotonic() - started
    records = [json.loads(line) for line in (args.output_dir / f"{row}-s{seed}" / "metrics.jsonl").open()]
    validation = [r for r in records if r["split"] == "validation"]
    best = max(validation, key=lambda r: r["validation/accuracy"])
    return {
        "row": row,
        "seed": seed,
        "what": ROWS[row][0],
        "accuracy": best["validation/accuracy"],
        "macro_f1": best["validation/macro_f1"],
        "steps": max(r["step"] for r in records),
        "wall_minutes": wall / 60,
        "load": (load_before + os.getloadavg()[0]) / 2,
        "command": "OMP_NUM_THREADS=1 " + shlex.join(cmd),
    }


def table(results: list[dict], seeds: list[int]) -> str:
    """One line per row: accuracy and macro-F1 per seed and their mean, steps, wall minutes, load."""
    by_row: dict[str, dict[int, dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], {})[r["seed"]] = r
    seed_cols = " | ".join(f"acc s{s}" for s in seeds)
    lines = [
        f"| row | variant | {seed_cols} | mean acc | mean macro-F1 | steps | wall (min) | load |",
        "| --- | --- " + "| --- " * (len(seeds) + 5) + "|",
    ]
    for row, runs in by_row.items():
        done = list(runs.values())
        accs = " | ".join(f"{runs[s]['accuracy']:.4f}" if s in runs else "" for s in seeds)

        def mean(key: str, runs: list[dict] = done) -> float:
            return sum(r[key] for r in runs) / len(runs)

        steps = "/".join(str(r["steps"]) for r in done)
        lines.append(
            f"| {row} | {done[0]['what']} | {accs} | {mean('accuracy'):.4f} | {mean('macro_f1'):.4f} | "
            f"{steps} | {mean('wall_minutes'):.1f} | {mean('load'):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="equal steps: optimizer steps per row (batch 32)")
    budget.add_argument("--minutes", type=float, help="equal wall time: training minutes per row")
    parser.add_argument("--warmup", type=int, default=100, help="--minutes: warm-up (and timing) steps")
    parser.add_argument("--data", default="dataset/fer2013", help="prepared FER2013 (emotionnet-prep)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds; every row runs each")
    parser.add_argument("--jobs", type=int, default=2, help="rows trained side by side")
    parser.add_argument("--only", help=f"comma-separated rows, in order (default all: {','.join(ROWS)})")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/ablations"))
    parser.add_argument("--train-rows", type=int, default=28_709, help="training split size (restart cycles)")
    parser.add_argument("--batch", type=int, default=32, help="per-process batch of the recipe")
    args = parser.parse_args(argv)
    rows = args.only.split(",") if args.only else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.output_dir = args.output_dir.resolve()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(row, seed) for row in rows for seed in seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_row(args, *job), jobs))

    date = time.strftime("%Y-%m-%d %H:%M")
    budget_text = f"{args.steps} steps" if args.steps else f"{args.minutes} minutes"
    markdown = (
        f"{table(results, seeds)}\n\nBudget per row: {budget_text}; {args.jobs} rows side by side, "
        f"{os.cpu_count()} cores; finished {date}. Load: 1-minute load average at a row's start and end.\n"
    )
    commands = "\n".join(f"- {r['row']} s{r['seed']}: `{r['command']}`" for r in results)
    out = args.output_dir / "ablations.json"
    existing = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(existing + results, indent=2) + "\n")
    with (args.output_dir / "ablations.md").open("a") as md:  # one section per invocation
        md.write(f"{markdown}\n{commands}\n\n")
    print(markdown)
    print(commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
