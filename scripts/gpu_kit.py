"""`make gpu-kit`: what an air-gapped CUDA node lacks, in .gpu-kit/, checked against a 64 MiB size budget.

    python scripts/gpu_kit.py                      # wheels + FER2013 copy + size check
    python scripts/gpu_kit.py --no-data            # wheels only (e.g. without ../shared)
    python scripts/gpu_kit.py --size-only          # the size check of what is there, nothing fetched

The node is taken to have Python 3.12, torch, accelerate, transformers, pyarrow, pandas and numpy, no
internet, and room for at most 64 MiB copied in with the checkout. The kit holds:
  wheels/           Python 3.12 manylinux x86-64 wheels of the packages below (no dependencies
                    resolved by pip: the list is explicit), and DeepSpeed's sdist (built there with
                    --no-build-isolation, ops JIT-compiled when used)
  fer2013.xz/.json  FER2013 Training + PublicTest, losslessly coded by scripts/gpu_fer_codec.py
MLflow is left out (4 MB of wheels plus dependencies): tracking stays off on the node and is tested on CPU.
Versions: constraints.txt where it pins one, else the version installed here (the tested combination).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import gpu_fer_codec  # noqa: E402

DEFAULT_FER = REPO.parent / "shared" / "fer2013" / "fer2013_dev.csv.gz"
BUDGET_MIB = 64
# What the check needs; scripts/gpu_kit_install.py installs each kit file whose distribution is missing.
TOP_LEVEL = ("datasets", "deepspeed", "pytest", "pytest-timeout")
# Dependencies of TOP_LEVEL that the node may lack, and setuptools/wheel to build DeepSpeed and the
# project without build isolation (a fresh Python 3.12 environment has neither): see BUILD_TOOLS.
DEPENDENCIES = (
    "dill", "multiprocess",                                              # datasets
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection",  # deepspeed
    "typing-extensions", "hjson", "py-cpuinfo", "msgpack", "ninja", "einops",
    "pluggy", "iniconfig", "pygments",                                   # pytest
)  # fmt: skip
BUILD_TOOLS = ("setuptools", "wheel")  # the newest: any recent one builds DeepSpeed and the project
SDISTS = ("deepspeed",)
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")  # pip also accepts the older manylinux tags


def constraint_pins(path: Path = REPO / "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#]+).*", line)
        if match:
            pins[normalize(match[1])] = match[2]
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(names: tuple[str, ...], pins: dict[str, str]) -> list[str]:
    """`name==version` for each name: constraints.txt first, else the version installed here."""
    specs = []
    for name in names:
        version = pins.get(normalize(name))
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                sys.exit(
                    f"gpu_kit: {name} is neither pinned in constraints.txt nor installed here; run make install"
                )
        specs.append(f"{name}=={version}")
    return specs


def download(specs: list[str], wheels: Path, binary: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels)]
    if binary:
        cmd += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
        cmd += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    else:
        # The sdist's metadata is prepared here with this environment's torch (DeepSpeed's setup.py imports it).
        cmd += ["--no-binary=:all:", "--no-build-isolation"]
    print("+", " ".join(cmd[1:5]), "...", " ".join(specs), flush=True)
    subprocess.run(cmd + specs, check=True)


def tree_bytes() -> int:
    """The checkout as copied to the node: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    paths = {REPO / p for p in listed.decode().split("\0") if p}
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / ".gpu-kit")
    parser.add_argument("--fer", type=Path, default=DEFAULT_FER, help="FER2013 CSV(.gz) to copy")
    parser.add_argument("--no-data", action="store_true", help="wheels only")
    parser.add_argument("--size-only", action="store_true", help="only check the size of what is there")
    parser.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    parser.add_argument("--extra", type=Path, action="append", default=[],
                        help="another path copied to the node, counted against the budget (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)

    wheels = args.out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not args.size_only:
        pins = constraint_pins()
        binary = [n for n in TOP_LEVEL + DEPENDENCIES if n not in SDISTS]
        download(pinned(tuple(binary), pins) + list(BUILD_TOOLS), wheels, binary=True)
        download(pinned(SDISTS, pins), wheels, binary=False)

    stem = args.out / "fer2013"
    if not (args.no_data or args.size_only):
        if stem.with_suffix(".json").is_file() and stem.with_suffix(".xz").is_file():
            print(f"{stem}.xz: kept (delete it to re-encode)")
        elif not args.fer.is_file():
            sys.exit(
                f"gpu_kit: {args.fer}: no such file; pass --fer PATH, or --no-data for a kit without data"
            )
        else:
            print(f"encoding {args.fer} (a few minutes: xz preset 9e) ...", flush=True)
            gpu_fer_codec.main(["encode", str(args.fer), str(stem)])

    parts = {"tree (tracked + untracked, not ignored)": tree_bytes(), "wheels/": dir_bytes(wheels)}
    parts["FER2013 copy"] = sum(
        stem.with_suffix(s).stat().st_size for s in (".xz", ".json") if stem.with_suffix(s).exists()
    )
    parts.update({str(p): dir_bytes(p) if p.is_dir() else p.stat().st_size for p in args.extra})
    total = sum(parts.values())
    for name, size in parts.items():
        print(f"  {mib(size):>10}  {name}")
    print(f"  {mib(total):>10}  total, budget {args.budget_mib:g} MiB")
    if total > args.budget_mib * 2**20:
        print(f"gpu_kit: over budget by {mib(total - int(args.budget_mib * 2**20))}: the tree, the kit and extra paths "
              f"must fit in {args.budget_mib:g} MiB; drop a package or re-code the data", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
