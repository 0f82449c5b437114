"""ONNX Runtime vs PyTorch on the CPU: logit agreement and throughput of `--runtime onnx` and `torch`.

    python -m benchmarks.bench_onnx                                     # about 2 minutes on a shared 2-core CPU
    python -m benchmarks.bench_onnx --synthetic --faces 16 --rounds 1 --doc ''   # smoke run

The model (the bundled one, or `--model`) is exported to ONNX by the product's own `export_onnx` in a
temporary copy. Agreement: the largest |logit difference| between the PyTorch export and ONNX Runtime on
the first `--faces` PublicTest faces of dataset/fer2013 (`--synthetic`: random faces). Throughput: the
same faces classified by `Ensemble.predict_proba` (no TTA) in batches of `--batch`, once per runtime as
`emotionnet-eval --runtime torch|onnx` loads it (torch: BatchNorm folded, channels_last), for each thread
count (torch.set_num_threads, which ONNX Runtime's session follows). Runtimes alternate within every
round; a figure is the median of the rounds. The last line is one JSON object:
{"max_logit_diff", "torch_<n>t_faces_s", "onnx_<n>t_faces_s", ...}.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_inference import decoded_faces
from benchmarks.report import batch_list, benchmark_parser, machine_line, publish
from emotionnet.inference.ensemble import RUNTIMES, Ensemble, default_model_dir
from emotionnet.inference.export import load_export
from emotionnet.inference.onnx_export import OPSET, OnnxModel, export_onnx, max_logit_difference

SECTION = "## ONNX Runtime vs PyTorch (CPU)"


def faces_per_s(ensemble: Ensemble, faces: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for chunk in faces.split(batch):
        ensemble.predict_proba(chunk)
    return len(faces) / (time.perf_counter() - start)


def measure(model: Path, faces: torch.Tensor, batch: int, threads: list[int], rounds: int) -> dict:
    """{(runtime, threads): [faces/s per round]}."""
    rates: dict[tuple[str, int], list[float]] = {}
    for count in threads:
        torch.set_num_threads(count)  # before loading: the ONNX Runtime session takes its thread count then
        ensembles = {r: Ensemble.load([str(model)], torch.device("cpu"), runtime=r) for r in RUNTIMES}
        for runtime, ensemble in ensembles.items():  # warm-up: first-call allocations
            ensemble.predict_proba(faces[:batch])
            rates[runtime, count] = []
        for index in range(rounds):
            for runtime in RUNTIMES if index % 2 == 0 else RUNTIMES[::-1]:
                rates[runtime, count].append(faces_per_s(ensembles[runtime], faces, batch))
        print(
            f"{count} thread(s): " + ", ".join(f"{r} {rates[r, count][-1]:.0f}" for r in RUNTIMES), flush=True
        )
    return rates


def report(command: str, data: str, rates: dict, difference: float, args, load: tuple) -> str:
    median = {key: statistics.median(values) for key, values in rates.items()}
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        machine_line(
            load, f"torch {torch.__version__}", f"onnxruntime {importlib.metadata.version('onnxruntime')}"
        ),
        f"Setup: {Path(args.model).name} exported by `emotionnet-export --format onnx` (opset {OPSET}); "
        f"{data} classified by `Ensemble.predict_proba` without TTA, {args.batch} faces per call, as "
        "`emotionnet-eval --runtime torch|onnx` loads the model; runtimes alternate within each of "
        f"{args.rounds} rounds; median faces/s of the rounds.",
        "",
        f"Agreement: largest |logit difference|, ONNX Runtime vs PyTorch, on {data}: **{difference:.1e}** "
        "(tolerance 1e-4).",
        "",
        "| threads | torch faces/s | onnx faces/s | onnx / torch |",
        "|---:|---:|---:|---:|",
    ]
    for count in args.threads:
        torch_rate, onnx_rate = median["torch", count], median["onnx", count]
        lines.append(f"| {count} | {torch_rate:.0f} | {onnx_rate:.0f} | {onnx_rate / torch_rate:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default=str(default_model_dir()), help="model export directory")
    parser.add_argument("--faces", type=int, default=256, help="faces compared and classified per round")
    parser.add_argument("--batch", type=int, default=64, help="faces per predict_proba call")
    parser.add_argument("--threads", type=batch_list, default=[1, 2], help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--synthetic", action="store_true", help="random faces even if dataset/fer2013 exists"
    )
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    faces, data = decoded_faces(args.faces, args.synthetic)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        model = Path(shutil.copytree(args.model, Path(tmp) / "model"))
        onnx_path, _ = export_onnx(model)
        pytorch, description = load_export(model)
        difference = max_logit_difference(
            pytorch, OnnxModel.create(str(onnx_path)), description.preprocessing(faces)
        )
        rates = measure(model, faces, args.batch, args.threads, args.rounds)
    command = " ".join(["python -m benchmarks.bench_onnx", *(sys.argv[1:] if argv is None else argv)])
    publish(report(command, data, rates, difference, args, (load_start, os.getloadavg()[0])), args.doc)
    summary: dict[str, float] = {"max_logit_diff": difference}
    for (runtime, count), values in rates.items():
        summary[f"{runtime}_{count}t_faces_s"] = round(statistics.median(values), 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
