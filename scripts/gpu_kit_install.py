"""Install what the GPU check needs without touching the machine's torch (scripts/gpu_check.sh runs this).

    python scripts/gpu_kit_install.py .gpu-kit      # offline: the kit's files for what is missing
    python scripts/gpu_kit_install.py               # no kit: the missing top-level packages from the index
    python scripts/gpu_kit_install.py --check .gpu-kit   # say what would be installed, install nothing

With the kit, only distributions that are missing (or older than the kit's) are installed, from the
kit's own files and with --no-deps, so pip never resolves (and never replaces) torch, numpy or pyarrow. Wheels
go first: setuptools/wheel must be there before DeepSpeed's sdist and the project build without
build isolation. DeepSpeed builds no ops (DS_BUILD_OPS=0): they are JIT-compiled when used. Then
the project itself (--no-deps, editable), unless this checkout is already what `emotionnet` imports.
`pip check` is printed for the log; its complaints are not fatal (versions beside the machine's own).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from gpu_kit import TOP_LEVEL, constraint_pins, normalize  # noqa: E402

PIP = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
# A distro Python refuses pip installs outside a venv (PEP 668); this machine's environment is ours to change.
ENV = {**os.environ, "PIP_BREAK_SYSTEM_PACKAGES": "1", "DS_BUILD_OPS": "0"}


def dist_name(file: Path) -> str:
    """Distribution name of a wheel (`name-version-...whl`) or sdist (`name-version.tar.gz`)."""
    return normalize(re.split(r"-(?=\d)", file.name, maxsplit=1)[0])


def installed(name: str, at_least: str | None = None) -> bool:
    """Whether `name` is installed (and, given `at_least`, not older than that version)."""
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    if at_least is None:
        return True
    try:
        from packaging.version import Version
    except ImportError:  # no way to compare: keep what is there
        return True
    return Version(version) >= Version(at_least)


def dist_version(file: Path) -> str:
    stem = file.name.removesuffix(".tar.gz")
    return re.split(r"-(?=\d)", stem, maxsplit=1)[1].split("-")[0]


def pip(args: list[str]) -> None:
    print("+ pip install", " ".join(args), flush=True)
    subprocess.run(PIP + args, check=True, env=ENV)


def install_from_kit(kit: Path, check: bool) -> None:
    files = sorted(p for p in (kit / "wheels").iterdir() if p.suffix == ".whl" or p.name.endswith(".tar.gz"))
    # Missing or older than the kit's (e.g. a typing-extensions too old for pydantic); never a downgrade.
    missing = [p for p in files if not installed(dist_name(p), dist_version(p))]
    kept = sorted({dist_name(p) for p in files} - {dist_name(p) for p in missing})
    print(
        f"kit: {len(files)} files; installed here at the kit's version or newer, kept: {', '.join(kept) or 'none'}"
    )
    print(f"kit: missing or older here: {', '.join(p.name for p in missing) or 'none'}")
    if check:
        return
    wheels = [str(p) for p in missing if p.suffix == ".whl"]
    sdists = [str(p) for p in missing if p.suffix != ".whl"]
    if wheels:
        pip(["--no-deps", "--no-index", *wheels])
    if sdists:
        pip(["--no-deps", "--no-index", "--no-build-isolation", *sdists])


def install_from_index(check: bool) -> None:
    pins = constraint_pins()
    wanted = [
        f"{n}=={pins[normalize(n)]}" if normalize(n) in pins else n for n in TOP_LEVEL if not installed(n)
    ]
    print(f"index: missing here: {', '.join(wanted) or 'none'}")
    if wanted and not check:
        # With dependencies: an installed torch satisfies DeepSpeed's `torch>=2` and is kept.
        pip(wanted)


def install_project() -> None:
    spec = importlib.util.find_spec("emotionnet")
    if spec is not None and spec.origin and Path(spec.origin).resolve().is_relative_to(REPO):
        print(f"project: emotionnet already imports from {REPO}")
        return
    try:
        pip(["--no-deps", "--no-build-isolation", "-e", str(REPO)])
    except subprocess.CalledProcessError:
        pip(["--no-deps", "--no-build-isolation", str(REPO)])  # setuptools too old for PEP 660 editables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("kit", type=Path, nargs="?", help="kit directory (absent: install from the index)")
    parser.add_argument("--check", action="store_true", help="list what is missing, install nothing")
    args = parser.parse_args(argv)
    try:
        if args.kit is not None and (args.kit / "wheels").is_dir():
            install_from_kit(args.kit, args.check)
        else:
            install_from_index(args.check)
        if not args.check:
            install_project()
    except subprocess.CalledProcessError as err:
        print(
            f"gpu_kit_install: {' '.join(err.cmd[3:])} failed with exit code {err.returncode}",
            file=sys.stderr,
        )
        return 1
    subprocess.run([sys.executable, "-m", "pip", "check"], env=ENV)
    return 0


if __name__ == "__main__":
    sys.exit(main())
