"""CPU inference throughput: `Ensemble.predict_proba` on decoded faces, before and after the speed-ups.

    python -m benchmarks.bench_inference                    # 2-5 minutes on a shared 2-core CPU
    python -m benchmarks.bench_inference --synthetic --faces 16 --rounds 1 --doc ''   # smoke run

Faces are the first `--faces` PublicTest rows of dataset/fer2013, decoded to uint8 48x48 beforehand
(`--synthetic`: random faces, no data needed), classified by the bundled model (or `--model`) through
the product's own `Ensemble.predict_proba`, in batches of the size `emotionnet-eval` reads, for each TTA
mode. Three variants of the same path, alternating within every round so load changes on a shared
machine hit each alike; a figure is the median of the rounds:

- before: the model as exported (`optimize=False`), one TTA view per forward pass of 256 faces: the
  previous `emotionnet-eval` defaults.
- passes: the model as exported, the TTA views streamed through passes of FORWARD_BATCH images.
- now: the model made ready for inference (BatchNorm folded, channels_last), passes of FORWARD_BATCH.

Every variant runs under torch.inference_mode with the current ten-crop views (the previous
torch.no_grad and per-crop resizing are not reproduced). The last line is one JSON object:
{"none_faces_s", "flip_faces_s", "tencrop_faces_s", "baseline_none_faces_s", ...}.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.report import benchmark_parser, machine_line, publish
from data_prep.schema import IMAGE_SIZE
from emotionnet.data.transforms import TTA_MODES
from emotionnet.inference.ensemble import FORWARD_BATCH, Ensemble, default_model_dir

SECTION = "## Inference throughput (CPU)"
REAL_DATA = Path("dataset/fer2013")
PREVIOUS_BATCH = 256  # emotionnet-eval's batch before the speed-ups, one TTA view per forward pass
TARGETS = {"none": 1500.0, "tencrop": 150.0}  # faces/s on 2 threads


@dataclass(frozen=True)
class Variant:
    name: str
    optimize: bool
    batch: int  # faces per predict_proba call
    per_pass: int | None  # images per forward pass; None: the call's faces, one view per pass


VARIANTS = (
    Variant("before", optimize=False, batch=PREVIOUS_BATCH, per_pass=None),
    Variant("passes", optimize=False, batch=FORWARD_BATCH, per_pass=FORWARD_BATCH),
    Variant("now", optimize=True, batch=FORWARD_BATCH, per_pass=FORWARD_BATCH),
)


def decoded_faces(count: int, synthetic: bool) -> tuple[torch.Tensor, str]:
    """(N, 48, 48) uint8 faces: the first PublicTest rows, or random ones."""
    if synthetic or not REAL_DATA.is_dir():
        generator = torch.Generator().manual_seed(0)
        faces = torch.randint(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
        return faces, f"{count} random 48x48 faces"
    from emotionnet.data.loaders import load_splits  # the datasets stack: only for real data

    rows = load_splits(REAL_DATA)["validation"]
    count = min(count, len(rows))
    images = rows.with_format("numpy", columns=["image"])[:count]["image"]
    return torch.from_numpy(images.astype("uint8")), f"the first {count} PublicTest faces of {REAL_DATA}"


def classify(ensemble: Ensemble, faces: torch.Tensor, tta: str, variant: Variant) -> torch.Tensor:
    batches = faces.split(variant.batch)
    return torch.cat([ensemble.predict_proba(b, tta, variant.per_pass or len(b)) for b in batches])


def faces_per_s(ensemble: Ensemble, faces: torch.Tensor, tta: str, variant: Variant) -> float:
    start = time.perf_counter()
    classify(ensemble, faces, tta, variant)
    return len(faces) / (time.perf_counter() - start)


def measure(model: str, faces: torch.Tensor, modes: list[str], rounds: int) -> tuple[dict, dict]:
    """{(variant, tta): [faces/s per round]} and {tta: largest probability difference from `before`}."""
    ensembles = {v.name: Ensemble.load([model], torch.device("cpu"), optimize=v.optimize) for v in VARIANTS}
    diffs = {}
    for tta in modes:  # warm-up (first-call allocations) and the agreement check
        probs = {v.name: classify(ensembles[v.name], faces[:FORWARD_BATCH], tta, v) for v in VARIANTS}
        diffs[tta] = max(float((p - probs["before"]).abs().max()) for p in probs.values())
    rates: dict[tuple[str, str], list[float]] = {(v.name, t): [] for v in VARIANTS for t in modes}
    for index in range(rounds):
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        for tta in modes:
            for v in order:
                rates[v.name, tta].append(faces_per_s(ensembles[v.name], faces, tta, v))
        now = ", ".join(f"{t} {rates['now', t][-1]:.0f}" for t in modes)
        print(f"round {index + 1}/{rounds}: now {now} faces/s", flush=True)
    return rates, diffs


def report(command: str, data: str, modes: list[str], rates: dict, diffs: dict, args, load: tuple) -> str:
    median = {key: statistics.median(values) for key, values in rates.items()}
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        machine_line(load, f"torch {torch.__version__}", f"{args.threads} torch threads"),
        f"Setup: {Path(args.model).name}, {data} decoded beforehand, classified by "
        "`Ensemble.predict_proba`; before = the model as exported, one TTA view per forward pass of "
        f"{PREVIOUS_BATCH} faces; passes = the model as exported, views streamed through passes of "
        f"{FORWARD_BATCH} images; now = BatchNorm folded and channels_last, passes of {FORWARD_BATCH}. "
        "All three run under torch.inference_mode with the current ten-crop views. Variants alternate "
        f"within each of {args.rounds} rounds; median faces/s of the rounds.",
        "",
        "| TTA | before | passes | now | now / before | max prob. difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tta in modes:
        before, passes, now = (median[v.name, tta] for v in VARIANTS)
        lines.append(
            f"| {tta} | {before:.0f} | {passes:.0f} | {now:.0f} | {now / before:.2f}x | {diffs[tta]:.1e} |"
        )
    lines.append("")
    for tta, target in TARGETS.items():
        if tta in modes:
            figure = median["now", tta]
            verdict = "met" if figure >= target else "MISSED"
            lines.append(f"- TTA {tta}: {figure:.0f} faces/s, target >= {target:.0f}: **{verdict}**.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default=str(default_model_dir()), help="model export directory")
    parser.add_argument("--faces", type=int, default=512, help="faces classified per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tta", default=",".join(TTA_MODES), help="comma-separated TTA modes")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--synthetic", action="store_true", help=f"random faces even if {REAL_DATA} exists")
    args = parser.parse_args(argv)
    modes = [m for m in args.tta.split(",") if m]
    if unknown := set(modes) - set(TTA_MODES):
        parser.error(f"unknown TTA mode(s) {', '.join(sorted(unknown))}; choose from {', '.join(TTA_MODES)}")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    faces, data = decoded_faces(args.faces, args.synthetic)
    rates, diffs = measure(args.model, faces, modes, args.rounds)
    command = " ".join(["python -m benchmarks.bench_inference", *(sys.argv[1:] if argv is None else argv)])
    publish(report(command, data, modes, rates, diffs, args, (load_start, os.getloadavg()[0])), args.doc)
    summary: dict[str, float] = {}
    for tta in modes:
        now, before = (statistics.median(rates[name, tta]) for name in ("now", "before"))
        summary |= {
            f"{tta}_faces_s": round(now, 1),
            f"baseline_{tta}_faces_s": round(before, 1),
            f"passes_{tta}_faces_s": round(statistics.median(rates["passes", tta]), 1),
            f"{tta}_ratio": round(now / before, 3),
            f"{tta}_max_prob_diff": diffs[tta],
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
