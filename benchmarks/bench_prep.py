"""Benchmark the data-prep stage against the naive FER2013 parse most scripts use.

    .venv/bin/python benchmarks/bench_prep.py [--input ../shared/fer2013/fer2013_dev.csv.gz] [--repeat 3]

Every case runs in a fresh interpreter, and its peak RSS comes from the kernel's accounting of that one
child (os.wait4), so cases cannot inflate each other. "process" time is the whole command as a user runs
it (interpreter start and imports included); "work" time is what the command itself reports (the prep's
manifest wall time; the naive parse's own timer). Inputs: the given CSV.gz, its decompressed copy, and a
copy with the rows repeated --repeat times (to show memory does not grow with the input).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO_ROOT.parent / "shared" / "fer2013" / "fer2013_dev.csv.gz"

# The usual FER2013 loading code: pandas read_csv, then str.split and np.array for every image.
NAIVE = """
import sys, time
import numpy as np, pandas as pd
start = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
images = np.stack([np.array(pixels.split(" "), dtype=np.uint8).reshape(48, 48) for pixels in frame.pixels])
labels = frame.emotion.to_numpy()
print(time.perf_counter() - start, len(images))
"""


@dataclass(frozen=True)
class Result:
    case: str
    rows: int
    process_s: float
    work_s: float
    peak_rss_mb: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.process_s


def run_measured(command: list[str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS in MB) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"benchmark case failed (exit {process.returncode}): {' '.join(command)}")
    return stdout, wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def naive(csv_path: Path, case: str) -> Result:
    stdout, wall, rss = run_measured([sys.executable, "-c", NAIVE, str(csv_path)])
    work, rows = stdout.split()
    return Result(case, int(rows), wall, float(work), rss)


def prep(input_path: Path, out_dir: Path, case: str) -> Result:
    command = [sys.executable, "-m", "emotionnet.cli.prep", str(input_path), str(out_dir), "--no-progress"]
    _, wall, rss = run_measured(command)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    shutil.rmtree(out_dir)
    return Result(case, manifest["rows_written"], wall, manifest["wall_time_s"], rss)


def make_inputs(source_gz: Path, workdir: Path, repeat: int) -> tuple[Path, Path]:
    plain = workdir / "fer.csv"
    with gzip.open(source_gz, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    repeated = workdir / f"fer_x{repeat}.csv"
    with open(plain, "rb") as src, open(repeated, "wb") as dst:
        header = src.readline()
        dst.write(header)
        for _ in range(repeat):
            src.seek(len(header))
            shutil.copyfileobj(src, dst, 1 << 24)
    return plain, repeated


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="FER2013 .csv.gz to benchmark on")
    parser.add_argument("--repeat", type=int, default=3, help="row repetitions for the memory-growth case")
    parser.add_argument("--trials", type=int, default=2, help="runs per case; the best time is reported")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary copies go")
    args = parser.parse_args()
    if not args.input.exists():
        print(f"bench_prep: {args.input} not found; nothing to benchmark", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        plain, repeated = make_inputs(args.input, workdir, args.repeat)
        plain_mb = plain.stat().st_size / 1e6
        out = workdir / "out"
        x = f"x{args.repeat}"
        trials = [
            [
                naive(plain, "naive, csv"),
                prep(plain, out, "prep, csv"),
                prep(args.input, out, "prep, csv.gz"),
                naive(repeated, f"naive, csv {x}"),
                prep(repeated, out, f"prep, csv {x}"),
            ]
            for _ in range(args.trials)
        ]
        # Best time of the trials (the machine is shared), worst memory.
        results = [
            Result(
                runs[0].case,
                runs[0].rows,
                min(r.process_s for r in runs),
                min(r.work_s for r in runs),
                max(r.peak_rss_mb for r in runs),
            )  # fmt: skip
            for runs in zip(*trials, strict=True)
        ]

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"input: {args.input} ({plain_mb:.0f} MB uncompressed); {os.cpu_count()} CPUs, load average {load}")
    print(f"best of {args.trials} trials per case\n")
    print("| case | rows | process wall (s) | work (s) | rows/s (process) | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.case} | {r.rows:,} | {r.process_s:.2f} | {r.work_s:.2f} | {r.rows_per_s:,.0f} | {r.peak_rss_mb:,.0f} |"
        )
    by_case = {r.case: r for r in results}
    naive_csv, prep_csv, prep_gz = by_case["naive, csv"], by_case["prep, csv"], by_case["prep, csv.gz"]
    prep_big = by_case[f"prep, csv {x}"]
    speedup = prep_csv.rows_per_s / naive_csv.rows_per_s
    work_speedup = (prep_csv.rows / prep_csv.work_s) / (naive_csv.rows / naive_csv.work_s)
    peak = max(prep_csv.peak_rss_mb, prep_gz.peak_rss_mb, prep_big.peak_rss_mb)
    growth = prep_big.peak_rss_mb / prep_csv.peak_rss_mb

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print()
    print(f"- prep vs naive rows/s: {speedup:.1f}x by process wall, {work_speedup:.1f}x by work time")
    print(
        f"- target < 5 s end to end on the uncompressed CSV: {prep_csv.process_s:.2f} s -> {verdict(prep_csv.process_s < 5)}"
    )
    print(f"- target >= 2x the naive rows/s: {speedup:.1f}x -> {verdict(speedup >= 2)}")
    print(f"- target peak RSS < 1 GB: {peak:,.0f} MB -> {verdict(peak < 1024)}")
    print(
        f"- RSS on {x} rows vs 1x: {growth:.2f}x (naive: "
        f"{by_case[f'naive, csv {x}'].peak_rss_mb / naive_csv.peak_rss_mb:.2f}x) -> {verdict(growth < 1.25)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
