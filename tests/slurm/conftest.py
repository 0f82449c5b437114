"""A real two-node SLURM cluster for the tests in this directory (started by start_cluster.sh).

Every test collected under tests/slurm is marked ``slurm``. The session fixture ``slurm_cluster`` starts the
cluster once (installing the packages if needed), hands out a ``SlurmCluster`` and stops it at the end of the
session; set SLURM_TEST_KEEP_CLUSTER=1 to leave it running between sessions. Where the cluster cannot be
started (not root, packages unavailable) the tests skip with the reason, except when CI=true: there they fail.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from tests.slurm.cluster import SlurmCluster

HERE = Path(__file__).resolve().parent
START_SCRIPT = HERE / "start_cluster.sh"
STOP_SCRIPT = HERE / "stop_cluster.sh"
UNAVAILABLE_EXIT = 3  # start_cluster.sh's status for "this machine cannot run the cluster"
SCRIPT_TIMEOUT_S = 600  # includes apt-get on a fresh machine
# One test session at a time owns the cluster: another session's teardown would stop it mid-test.
SESSION_LOCK = Path("/run/lock/emotionnet-slurm-test.lock")
SESSION_LOCK_TIMEOUT_S = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slurm)
            # One pytest process at a time owns the test cluster: `make test` runs these after its parallel part.
            item.add_marker(pytest.mark.serial)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs the SLURM test cluster, but it cannot start here: {reason}", pytrace=False)
    pytest.skip(f"no SLURM test cluster: {reason}")


@contextmanager
def _session_lock() -> Iterator[None]:
    with SESSION_LOCK.open("w") as handle:
        deadline = time.monotonic() + SESSION_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {SESSION_LOCK} for {SESSION_LOCK_TIMEOUT_S} s")
                time.sleep(1)
        yield  # closing the file releases the lock


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        _unavailable("must run as root (starts munged, slurmctld and slurmd)")
    with _session_lock():
        yield from _running_cluster()


def _running_cluster() -> Iterator[SlurmCluster]:
    try:
        started = subprocess.run(
            [str(START_SCRIPT)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False
        )
    except FileNotFoundError as error:  # no bash
        _unavailable(str(error))
    if started.returncode == UNAVAILABLE_EXIT:
        last_line = (started.stderr.strip().splitlines() or ["start_cluster.sh gave no reason"])[-1]
        _unavailable(last_line.removeprefix("[slurm-test] UNAVAILABLE: "))
    if started.returncode != 0:
        pytest.fail(
            f"{START_SCRIPT.name} failed (exit {started.returncode}):\n{started.stdout}{started.stderr}",
            pytrace=False,
        )
    try:
        yield SlurmCluster()
    finally:
        if os.environ.get("SLURM_TEST_KEEP_CLUSTER") != "1":
            stopped = subprocess.run(
                [str(STOP_SCRIPT)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=False
            )
            if stopped.returncode != 0:
                pytest.fail(f"{STOP_SCRIPT.name} failed:\n{stopped.stdout}{stopped.stderr}", pytrace=False)
