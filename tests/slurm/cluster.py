"""Client side of the test cluster: submit batch scripts and read job states with the SLURM commands."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Collection

COMMAND_TIMEOUT_S = 30
POLL_INTERVAL_S = 0.5

# States a job does not leave by itself (REQUEUED and the like move on to PENDING).
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
# A field starts at "Key=" after whitespace; values may contain "=" (TRES=cpu=1,...) or spaces (paths).
_FIELD_START = re.compile(r"(?<!\S)([A-Za-z][\w/:]*)=")


def parse_scontrol_record(text: str) -> dict[str, str]:
    """Parses one ``scontrol show <entity> --oneliner`` record into its Key=Value fields."""
    matches = list(_FIELD_START.finditer(text))
    return {
        match.group(1): text[match.end() : following.start() if following else len(text)].strip()
        for match, following in zip(matches, [*matches[1:], None], strict=True)
    }


def _run(*command: str) -> str:
    """Runs a SLURM client command and returns its stdout; its stderr becomes the error message."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


class SlurmCluster:
    """Submits to and inspects the running test cluster with the ordinary SLURM client commands."""

    def submit(self, script_path: str | os.PathLike[str], *sbatch_args: str) -> str:
        """Submits a batch script with ``sbatch`` and returns the job id."""
        return _run("sbatch", "--parsable", *sbatch_args, str(script_path)).strip().split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str]:
        """Returns ``scontrol show job`` fields (JobState, Restarts, ExitCode, NodeList, ...)."""
        return parse_scontrol_record(_run("scontrol", "show", "job", "--oneliner", job_id))

    def wait(self, job_id: str, timeout: float, until: Collection[str] = TERMINAL_STATES) -> str:
        """Polls until the job's state is in ``until`` (default: a final state) and returns that state.

        Raises TimeoutError after ``timeout`` seconds, and AssertionError when the job ends in a final
        state outside ``until``; both carry the job's full record.
        """
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(job_id)
            state = info["JobState"]
            if state in until:
                return state
            if state in TERMINAL_STATES:
                raise AssertionError(f"job {job_id} ended {state} while waiting for {sorted(until)}: {info}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout} s: {info}")
            time.sleep(POLL_INTERVAL_S)
