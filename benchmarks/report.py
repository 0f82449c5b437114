"""What every benchmark shares: writing its own section of docs/benchmarks.md, and parsing a list of batch sizes."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from data_prep.files import write_atomic
from emotionnet.train.environment import cpu_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
DOC_TITLE = "# Benchmarks"


def write_section(doc: Path, section: str) -> None:
    """Replace (or append) the section headed by `section`'s first line, leaving the rest of the file."""
    text = doc.read_text() if doc.exists() else f"{DOC_TITLE}\n"
    lines = text.splitlines(keepends=True)
    heading = section.splitlines()[0].strip()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(doc, text)


def machine_line(load: tuple[float, float], *facts: str) -> str:
    """A report's "Machine:" line: cores and CPU model, how busy the machine was (the load average at the start
    and at the end, the benchmark's own processes included), then `facts` (versions, threads) and the date."""
    extra = "".join(f"; {fact}" for fact in facts)
    return (
        f"Machine: {os.cpu_count()}-core CPU ({cpu_model()}), no GPU, load average {load[0]:.1f} at the start "
        f"and {load[1]:.1f} at the end{extra}. Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}."
    )


def publish(section: str, doc: str | None) -> None:
    """Print the section and, unless `doc` is empty, write it into that markdown file."""
    print(section)
    if doc:
        write_section(Path(doc), section)
        print(f"updated {doc}")


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser: its module docstring's first line as description, and `--doc`."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--doc", default="docs/benchmarks.md", help="markdown file to update ('' to skip)")
    return parser


def batch_list(text: str) -> list[int]:
    """`--batch-sizes 8,64,256` -> [8, 64, 256]."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"comma-separated positive integers, got {text!r}")
    return values
