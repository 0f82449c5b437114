"""gpu_check.json for scripts/gpu_check.sh: one record per check, rewritten atomically after each one.

    gpu_check_report.py JSON init --mode full|quick|cpu     date, host, GPU (nvidia-smi), mode
    gpu_check_report.py JSON versions                        python/torch/accelerate/deepspeed/... versions
    gpu_check_report.py JSON add NAME --rc RC --started T --output FILE [--figures FILE]
    gpu_check_report.py JSON skip NAME REASON
    gpu_check_report.py JSON junit FILE...                   one record per pytest test case
    gpu_check_report.py JSON finish                          summary; exit 1 if any check failed
    gpu_check_report.py - bench-gpu FILE                     benchmarks.bench_gpu's table -> figures JSON
    gpu_check_report.py - last-json FILE                     the last line that is a JSON object

Exit code of a check: 0 pass; 77 skip (its last output line says why); 124/137 timed out; else fail.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data_prep without installing the package
from data_prep.files import write_atomic  # noqa: E402

SKIP = 77
TIMED_OUT = (124, 137)
TAIL_LINES = 25
PACKAGES = ("torch", "torchvision", "accelerate", "deepspeed", "datasets", "transformers", "numpy", "pyarrow")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def save(path: Path, report: dict) -> None:
    write_atomic(path, json.dumps(report, indent=1) + "\n")


def tail(path: Path | None, lines: int = TAIL_LINES) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def gpu_name() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    try:
        import torch

        found["cuda"] = torch.version.cuda
        found["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            found["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError as err:
        found["torch_import_error"] = str(err)
    return found


def put(report: dict, record: dict) -> None:
    """Add a check record, replacing an earlier one of the same name (a re-run)."""
    report["checks"] = [c for c in report["checks"] if c["name"] != record["name"]] + [record]


def status_of(rc: int) -> str:
    return "pass" if rc == 0 else "skip" if rc == SKIP else "fail"


def add_record(
    report: dict, name: str, rc: int, seconds: float, output: Path | None, figures: Path | None
) -> dict:
    record = {"name": name, "status": status_of(rc), "seconds": round(seconds, 1), "exit_code": rc}
    text = tail(output)
    if record["status"] == "skip":
        record["reason"] = text.splitlines()[-1] if text else "skipped"
    elif record["status"] == "fail":
        prefix = f"timed out (exit {rc})\n" if rc in TIMED_OUT else ""
        record["error"] = prefix + text
    if figures is not None and figures.is_file():
        try:
            record["figures"] = json.loads(figures.read_text())
        except json.JSONDecodeError as err:
            record["figures_error"] = f"{figures}: {err}"
    put(report, record)
    return record


def junit_records(path: Path) -> list[dict]:
    """One record per test case of a pytest JUnit XML file (a missing or cut file gives one failure)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        return [
            {"name": f"pytest:{path.name}", "status": "fail", "seconds": 0.0, "error": f"no JUnit XML: {err}"}
        ]
    records = []
    for case in root.iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        record = {"name": f"pytest:{module}.py::{case.get('name')}", "status": "pass",
                  "seconds": round(float(case.get("time", 0.0)), 1)}  # fmt: skip
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            text = (failure.get("message", "") + "\n" + (failure.text or "")).strip()
            record.update(status="fail", error="\n".join(text.splitlines()[-TAIL_LINES:]))
        elif skipped is not None:
            record.update(status="skip", reason=skipped.get("message", "skipped"))
        records.append(record)
    return records


def bench_gpu_figures(path: Path) -> dict:
    """Rows of bench_gpu's plain table, keyed `b<batch>_<precision>_<compile>[_cl]`."""
    lines = path.read_text(errors="replace").splitlines()
    figures = {}
    for start, line in enumerate(lines):
        if not line.startswith("batch  "):
            continue
        header = re.split(r"\s{2,}", line.strip())
        for row_line in lines[start + 1 :]:
            cells = re.split(r"\s{2,}", row_line.strip(), maxsplit=len(header) - 1)
            if len(cells) < len(header) - 1 or not cells[0].isdigit():
                break
            row = dict(zip(header, cells, strict=False))
            layout = "_cl" if row["channels_last"] == "on" else ""
            figures[f"b{row['batch']}_{row['precision']}_{row['compile']}{layout}"] = {
                "median_ms": number(row["median ms"]),
                "p90_ms": number(row["p90 ms"]),
                "img_s": number(row["img/s"]),
                "warmup_s": number(row["warm-up s"]),
                "peak_mib": number(row["peak MiB"]),
                "note": row.get("note", ""),
            }
    return figures


def number(cell: str) -> float | None:
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None


def last_json(path: Path) -> dict:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {}


def finish(report: dict) -> int:
    counts = {s: sum(c["status"] == s for c in report["checks"]) for s in ("pass", "fail", "skip")}
    report["summary"] = {
        **counts,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    for c in report["checks"]:
        why = c.get("reason") or (c.get("error", "").splitlines() or [""])[-1]
        print(
            f"{c['status']:>4}  {c['seconds']:7.1f}s  {c['name']}  {why[:100] if c['status'] != 'pass' else ''}"
        )
    print(f"gpu-check: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return 1 if counts["fail"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("json", type=Path, help="the report (- for the figure extractors)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init").add_argument("--mode", required=True, choices=("full", "quick", "cpu"))
    sub.add_parser("versions")
    add = sub.add_parser("add")
    add.add_argument("name")
    add.add_argument("--rc", type=int, required=True)
    add.add_argument("--started", type=float, required=True, help="epoch seconds when the check began")
    add.add_argument("--output", type=Path)
    add.add_argument("--figures", type=Path)
    skip = sub.add_parser("skip")
    skip.add_argument("name")
    skip.add_argument("reason")
    sub.add_parser("junit").add_argument("files", type=Path, nargs="*")
    sub.add_parser("finish")
    sub.add_parser("bench-gpu").add_argument("file", type=Path)
    sub.add_parser("last-json").add_argument("file", type=Path)
    args = parser.parse_args(argv)

    if args.command in ("bench-gpu", "last-json"):
        extract = bench_gpu_figures if args.command == "bench-gpu" else last_json
        print(json.dumps(extract(args.file)))
        return 0
    if args.command == "init":
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        report = {"date": now, "host": socket.gethostname(), "mode": args.mode, "gpu": gpu_name(),
                  "versions": {}, "checks": [], "summary": {}}  # fmt: skip
        save(args.json, report)
        return 0
    # Checks may finish concurrently (the data prep runs beside the tests): one writer at a time.
    # The lock is on the folder: no extra file among the results.
    folder = os.open(args.json.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        return update(args)
    finally:
        os.close(folder)


def update(args: argparse.Namespace) -> int:
    report = load(args.json)
    code = 0
    if args.command == "versions":
        report["versions"] = versions()
    elif args.command == "add":
        record = add_record(report, args.name, args.rc, time.time() - args.started, args.output, args.figures)
        print(f"--- {args.name}: {record['status']} in {record['seconds']}s", flush=True)
    elif args.command == "skip":
        put(report, {"name": args.name, "status": "skip", "seconds": 0.0, "reason": args.reason})
        print(f"--- {args.name}: skip ({args.reason})", flush=True)
    elif args.command == "junit":
        for path in args.files:
            for record in junit_records(path):
                put(report, record)
    elif args.command == "finish":
        code = finish(report)
    save(args.json, report)
    return code


if __name__ == "__main__":
    sys.exit(main())
