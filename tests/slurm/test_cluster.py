"""What the test cluster guarantees, as the training and preemption tests will rely on it."""

from __future__ import annotations

import re
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from tests.slurm.cluster import SlurmCluster


def write_batch_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def test_one_node_job_completes_and_writes_its_output(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = write_batch_script(
        tmp_path / "hello.sh", 'echo "hello from $SLURMD_NODENAME in job $SLURM_JOB_ID"\n'
    )
    output = tmp_path / "hello.out"

    job_id = slurm_cluster.submit(script, "--nodes=1", "--ntasks=1", f"--output={output}")

    assert slurm_cluster.wait(job_id, timeout=60) == "COMPLETED"
    assert re.fullmatch(rf"hello from node[12] in job {job_id}\n", output.read_text())
    info = slurm_cluster.job_info(job_id)
    assert info["ExitCode"] == "0:0"
    assert info["NodeList"] in {"node1", "node2"}


def test_failing_job_ends_failed_with_its_exit_code(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = write_batch_script(tmp_path / "fail.sh", "exit 3\n")

    job_id = slurm_cluster.submit(script, f"--output={tmp_path / 'fail.out'}")

    assert slurm_cluster.wait(job_id, timeout=60) == "FAILED"
    assert slurm_cluster.job_info(job_id)["ExitCode"] == "3:0"


def test_two_node_job_runs_one_task_per_node_with_distinct_node_ids(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # Single quotes: each task expands SLURM_NODEID etc. on its own node, not the batch script once.
    script = write_batch_script(
        tmp_path / "two_nodes.sh",
        """\
        echo "main=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) nnodes=$SLURM_NNODES"
        srun bash -c 'echo "task nodeid=$SLURM_NODEID node=$SLURMD_NODENAME procid=$SLURM_PROCID"'
        """,
    )
    output = tmp_path / "two_nodes.out"

    job_id = slurm_cluster.submit(script, "--nodes=2", "--ntasks-per-node=1", f"--output={output}")

    assert slurm_cluster.wait(job_id, timeout=60) == "COMPLETED"
    text = output.read_text()
    assert "main=node1 nnodes=2" in text
    tasks = re.findall(r"task nodeid=(\d+) node=(\S+) procid=(\d+)", text)
    assert sorted(tasks) == [("0", "node1", "0"), ("1", "node2", "1")], text


def test_usr1_reaches_batch_script_which_requeues_itself_and_reruns(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    events = tmp_path / "events.log"
    # "sleep & wait": bash runs a trap only between commands, and "wait" returns as soon as a signal lands.
    script = write_batch_script(
        tmp_path / "requeue.sh",
        f"""\
        note() {{ echo "$(date +%s.%N) $*" >> "{events}"; }}
        note "start restart=${{SLURM_RESTART_COUNT-unset}}"
        if [[ -n ${{SLURM_RESTART_COUNT:-}} ]]; then note done; exit 0; fi
        requeue() {{ note usr1; scontrol requeue "$SLURM_JOB_ID"; }}
        trap requeue USR1
        trap 'note term; exit 143' TERM
        note ready
        while true; do sleep 1 & wait $!; done
        """,
    )
    output = tmp_path / "requeue.out"

    job_id = slurm_cluster.submit(script, "--requeue", "--open-mode=append", f"--output={output}")
    wait_for(
        lambda: events.exists() and "ready" in events.read_text(), 60, f"job {job_id} installing its trap"
    )
    signalled_at = time.time()
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=30)

    assert slurm_cluster.wait(job_id, timeout=90) == "COMPLETED"
    timeline = [
        (float(stamp) - signalled_at, event)
        for stamp, event in (line.split(" ", 1) for line in events.read_text().splitlines())
    ]
    print("\n".join(f"{offset:+7.2f} s  {event}" for offset, event in timeline))
    assert [event for _, event in timeline] == [
        "start restart=unset",
        "ready",
        "usr1",
        "term",  # scontrol requeue ends the running batch script with SIGTERM
        "start restart=1",
        "done",
    ]
    offsets = {event: offset for offset, event in timeline}
    assert offsets["usr1"] < 10, "USR1 took too long to reach the batch script"
    assert slurm_cluster.job_info(job_id)["Restarts"] == "1"
    assert "DUE TO JOB REQUEUE" in output.read_text()
