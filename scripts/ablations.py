"""Ablations of the CPU recipe: every row is one training run, recorded as an MLflow run tagged
`ablation=<row>` and `seed=<n>`, and the tool writes the table (markdown) of all rows.

    OMP_NUM_THREADS=1 python scripts/ablations.py --data /tmp/fer_prepared --steps 900 --seeds 0,1 \
        --jobs 2 --only base,sgd,restarts
    OMP_NUM_THREADS=1 python scripts/ablations.py --data /tmp/fer_prepared --minutes 6 --only backbone,full

Each row is `emotionnet-train --config configs/train/fer2013_cpu.yaml` plus the shared overrides below
and the row's own (ROWS), as one process with one compute thread and no loader workers; `--jobs` runs
train side by side (one per core), row by row in the order given, each row's seeds together. The budget
is equal steps (`--steps`: a warm-up of a tenth, then one cosine ending on the last step) or equal wall
time (`--minutes`: the recipe's time budget, which fixes the step count after timing the warm-up).
The table gives each row's best validation (PublicTest) accuracy per seed, the mean accuracy and
macro-F1, the steps, wall minutes and the load average while it ran, for every finished run under
`--output-dir` (`--report` rewrites it without training): `ablations.md` and `ablations.json` there; the
MLflow store under `--output-dir` keeps every run (`emotionnet-mlflow-ui`).
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

import yaml

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
    "no_transformer": ("full without the transformer encoder", ["model.transformer=false"]),
    "no_spatial": ("full without spatial self-attention", ["model.spatial_attention=false"]),
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
    "sqrt_weights": ("square-root class weights (Disgust x3.1)", ["loss.class_weights=sqrt"]),
    "no_class_weights": ("no class weights", ["loss.class_weights=none"]),
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
    "lr_2e3": ("AdamW lr 2e-3 (the recipe's 1e-3 doubled)", ["optim.lr=2e-3"]),
}


def budget_overrides(args: argparse.Namespace) -> list[str]:
    if args.minutes is not None:
        return [f"run.time_budget_min={args.minutes}", f"schedule.warmup_steps={args.warmup}"]
    warmup = max(1, round(args.steps * WARMUP_FRACTION))
    return [
        f"schedule.budget_steps={args.steps}",
        "run.time_budget_min=null",
        f"schedule.warmup_steps={warmup}",
    ]


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


ROW_FACTS = "ablation.json"  # in each row's run directory: wall time, load, command


def run_row(args: argparse.Namespace, row: str, seed: int) -> None:
    cmd = command(args, row, seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"row {row} seed {seed} failed ({done.returncode}):\n{log.read()[-3000:]}")
    facts = {
        "wall_minutes": (time.monotonic() - started) / 60,
        "load": (load_before + os.getloadavg()[0]) / 2,
        "command": "OMP_NUM_THREADS=1 " + shlex.join(cmd),
    }
    (args.output_dir / f"{row}-s{seed}" / ROW_FACTS).write_text(json.dumps(facts, indent=1) + "\n")


def collect(output_dir: Path) -> list[dict]:
    """Every finished row under `output_dir`: a run directory tagged `ablation` with a validation record
    (rows run without ROW_FACTS, e.g. by an interrupted invocation, get their wall time from the files)."""
    results = []
    for config_path in output_dir.glob("*/config.yaml"):
        run = config_path.parent
        tags = yaml.safe_load(config_path.read_text())["tracking"]["tags"]
        metrics = run / "metrics.jsonl"
        if "ablation" not in tags or not metrics.is_file():
            continue
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        validation = [r for r in records if r["split"] == "validation"]
        if not validation:
            continue
        best = max(validation, key=lambda r: r["validation/accuracy"])
        facts = json.loads((run / ROW_FACTS).read_text()) if (run / ROW_FACTS).is_file() else {}
        results.append(
            {
                "row": tags["ablation"],
                "seed": int(tags["seed"]),
                "what": ROWS.get(tags["ablation"], ("?",))[0],
                "accuracy": best["validation/accuracy"],
                "macro_f1": best["validation/macro_f1"],
                "steps": max(r["step"] for r in records),
                "wall_minutes": facts.get(
                    "wall_minutes", (records[-1]["time"] - config_path.stat().st_mtime) / 60
                ),
                "load": facts.get("load"),
                "command": facts.get("command", f"see {config_path}"),
            }
        )
    order = list(ROWS)
    return sorted(
        results, key=lambda r: (order.index(r["row"]) if r["row"] in order else len(order), r["seed"])
    )


def table(results: list[dict]) -> str:
    """One line per row: accuracy per seed, mean accuracy and macro-F1, steps, wall minutes, load."""
    seeds = sorted({r["seed"] for r in results})
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
        loads = [r["load"] for r in done if r["load"] is not None]
        load = f"{sum(loads) / len(loads):.1f}" if loads else "n/a"
        steps = "/".join(str(r["steps"]) for r in done)
        lines.append(
            f"| {row} | {done[0]['what']} | {accs} | {mean(done, 'accuracy'):.4f} | "
            f"{mean(done, 'macro_f1'):.4f} | {steps} | {mean(done, 'wall_minutes'):.1f} | {load} |"
        )
    return "\n".join(lines)


def mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def report(output_dir: Path) -> str:
    """Write ablations.md and ablations.json for every finished row under `output_dir`; return the table."""
    results = collect(output_dir)
    markdown = (
        f"{table(results)}\n\nOne process per run, one compute thread, rows side by side on "
        f"{os.cpu_count()} cores; load: the 1-minute load average at a run's start and end (n/a: not "
        f"recorded). Written {time.strftime('%Y-%m-%d %H:%M')}.\n\n"
        + "\n".join(f"- {r['row']} s{r['seed']}: `{r['command']}`" for r in results)
        + "\n"
    )
    (output_dir / "ablations.md").write_text(markdown)
    (output_dir / "ablations.json").write_text(json.dumps(results, indent=2) + "\n")
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="equal steps: optimizer steps per row (batch 32)")
    budget.add_argument("--minutes", type=float, help="equal wall time: training minutes per row")
    budget.add_argument("--report", action="store_true", help="train nothing: rewrite the table of the runs")
    parser.add_argument("--warmup", type=int, default=100, help="--minutes: warm-up (and timing) steps")
    parser.add_argument("--data", default="dataset/fer2013", help="prepared FER2013 (emotionnet-prep)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds; every row runs each")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained side by side")
    parser.add_argument("--only", help=f"comma-separated rows, in order (default all: {','.join(ROWS)})")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/ablations"))
    parser.add_argument("--train-rows", type=int, default=28_709, help="training split size (restart cycles)")
    parser.add_argument("--batch", type=int, default=32, help="per-process batch of the recipe")
    args = parser.parse_args(argv)
    rows = args.only.split(",") if args.only else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    args.output_dir = args.output_dir.resolve()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        jobs = [(row, int(seed)) for row in rows for seed in args.seeds.split(",")]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run_row(args, *job), jobs))
    print(report(args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
