"""Training through `emotionnet-launch slurm` on the real two-node test cluster.

CPU jobs (gloo) with the tiny config: a job that prepares synthetic data and trains; a job that spans both
nodes; a job that is preempted with SIGUSR1, checkpoints, requeues itself and finishes the same run; a job
SIGKILLed and requeued onto the other node, which takes over its earlier attempt's lock and finishes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_prep.prepare import PrepOptions, prepare
from emotionnet.cli.synth import main as synth_main
from tests.slurm.cluster import SlurmCluster

LAUNCH = Path(sys.executable).parent / "emotionnet-launch"
TINY = "tests/configs/tiny.yaml"
JOB_TIMEOUT_S = 240
# Small and quiet: no MLflow where a test does not look at it, no data-loader workers.
FAST = ["run.log_every_steps=10", "data.num_workers=0"]
NO_TRACKING = ["tracking.enabled=false"]

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(420)]


def launch(tmp_path: Path, *args: str) -> dict[str, str]:
    """Runs `emotionnet-launch slurm`; returns the job ids and paths it printed."""
    result = subprocess.run(
        [str(LAUNCH), "slurm", "--output-dir", str(tmp_path / "outputs"), "--log-dir", str(tmp_path / "logs"),
         "--time", "00:15:00", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    info = {"train_job": re.search(r"^submitted training job (\d+)", printed, re.M).group(1)}
    info["log"] = re.search(r"^submitted training job \d+.*: log (\S+)$", printed, re.M).group(1)
    info["run_dir"] = re.search(r"^run directory: (\S+)$", printed, re.M).group(1)
    if prep := re.search(r"^submitted prep job (\d+): log (\S+)$", printed, re.M):
        info["prep_job"], info["prep_log"] = prep.groups()
    return info


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.5)


def train_steps(run_dir: Path) -> list[int]:
    """Steps of the train records in metrics.jsonl so far (a line being written is left out)."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic dataset on the shared filesystem: 400 train / 50 validation / 50 test faces."""
    root = tmp_path_factory.mktemp("data")
    assert synth_main([str(root / "synth.csv"), "--rows", "500", "--seed", "1"]) == 0
    prepare(root / "synth.csv", root / "prepared", PrepOptions())
    return root / "prepared"


def test_cpu_job_prepares_synthetic_data_and_trains(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = launch(
        tmp_path, "--job-name", "cpu2", "--cpu", "--processes-per-node", "2",
        "--prep", str(tmp_path / "synth.csv"), "--synthetic-rows", "400", "--data-dir", str(tmp_path / "data"),
        "--config", TINY, "run.max_steps=20", "run.log_sample_ids=true", *FAST, *NO_TRACKING,
    )  # fmt: skip

    assert slurm_cluster.wait(job["prep_job"], timeout=JOB_TIMEOUT_S) == "COMPLETED"
    assert slurm_cluster.wait(job["train_job"], timeout=JOB_TIMEOUT_S) == "COMPLETED"
    assert "preparing" in Path(job["prep_log"]).read_text()
    assert (tmp_path / "data" / "manifest.json").is_file()
    log = Path(job["log"]).read_text()
    assert f"job {job['train_job']} restart 0 on node" in log and "1 node(s) x 2 process(es)" in log
    assert "training finished" in log
    run_dir = Path(job["run_dir"])
    assert run_dir == tmp_path / "outputs" / f"cpu2-{job['train_job']}"
    assert f"run directory: {run_dir}" in log
    assert train_steps(run_dir) == [10, 20]
    assert (run_dir / "final").is_dir() and (run_dir / "checkpoints" / "step_00000020").is_dir()
    # Two gloo processes, each with its own half of every step's rows.
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    rows = [
        {r["step"]: set(r["row_ids"]) for r in read_jsonl(run_dir / "samples" / f"rank{i}.jsonl")}
        for i in (0, 1)
    ]
    assert rows[0].keys() == rows[1].keys() == set(range(1, 21))
    assert all(not rows[0][step] & rows[1][step] for step in rows[0])


def test_two_node_job_trains_one_model_across_both_nodes(
    slurm_cluster: SlurmCluster, tmp_path: Path, prepared: Path
) -> None:
    job = launch(
        tmp_path, "--job-name", "twonode", "--nodes", "2", "--cpu", "--processes-per-node", "1",
        "--module", "tests.scripts.train_and_dump",
        "--config", TINY, f"data.data_dir={prepared}", "run.max_steps=20", *FAST, *NO_TRACKING,
    )  # fmt: skip

    assert slurm_cluster.wait(job["train_job"], timeout=JOB_TIMEOUT_S) == "COMPLETED"
    assert slurm_cluster.job_info(job["train_job"])["NodeList"] == "node[1-2]"
    log = Path(job["log"]).read_text()
    assert "2 node(s) x 1 process(es), rendezvous 127.0.0.1:" in log
    run_dir = Path(job["run_dir"])
    # Each node's task expanded its own SLURM_NODEID; the two processes formed one group of 2.
    assert "node node1 has node rank 0" in log and "node node2 has node rank 1" in log
    facts = [json.loads((run_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(f["rank"], f["world_size"], f["distributed"], f["exit_code"]) for f in facts] == [
        (0, 2, "ddp", 0),
        (1, 2, "ddp", 0),
    ]
    params = [torch.load(run_dir / f"params_rank{rank}.pt", map_location="cpu") for rank in (0, 1)]
    assert params[0].keys() == params[1].keys()
    unequal = [name for name in params[0] if not torch.equal(params[0][name], params[1][name])]
    assert not unequal, f"ranks disagree on {unequal[:5]}"
    assert train_steps(run_dir) == [10, 20]


def test_preempted_job_checkpoints_requeues_itself_and_finishes_the_same_run(
    slurm_cluster: SlurmCluster, tmp_path: Path, prepared: Path
) -> None:
    # 400 train rows / (8 x 2 processes) = 25 steps an epoch; 60 steps cross two epoch ends.
    job = launch(
        tmp_path, "--job-name", "preempt", "--cpu", "--processes-per-node", "2",
        "--config", TINY, f"data.data_dir={prepared}", "run.max_steps=60", "checkpoint.every_steps=1000",
        "tracking.system_metrics=false", "tracking.log_model=false", *FAST,
    )  # fmt: skip
    job_id, run_dir = job["train_job"], Path(job["run_dir"])
    wait_for(lambda: 10 in train_steps(run_dir), JOB_TIMEOUT_S, f"job {job_id} logging step 10")
    signalled = time.monotonic()
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=30)
    slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT_S, until={"PENDING", "REQUEUED", "REQUEUE_HOLD"})
    requeued = time.monotonic()

    assert slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT_S) == "COMPLETED"
    print(
        f"USR1 -> requeued {requeued - signalled:.1f} s; USR1 -> completed {time.monotonic() - signalled:.1f} s"
    )
    assert slurm_cluster.job_info(job_id)["Restarts"] == "1"
    log = Path(job["log"]).read_text()
    saved = re.search(r"stop signal received: checkpoint (\S+) saved", log).group(1)
    assert f"checkpoint {saved} saved; requeueing job {job_id}" in log
    assert f"job {job_id} restart 1 on" in log and f"resuming from {saved}" in log
    assert re.search(rf"resumed from {re.escape(saved)} at step (\d+)", log)
    stopped_at = int(Path(saved).name.removeprefix("step_"))
    assert 10 < stopped_at < 60, "the stop should land mid-run"
    assert "training finished" in log
    # One record per step: the steps redone after the checkpoint replaced the first attempt's.
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert train_steps(run_dir) == list(range(10, 61, 10))
    assert [r["epoch"] for r in records if r["split"] == "validation"] == [0, 1, 2]
    assert [r["split"] for r in records].count("test") == 1
    assert (run_dir / "final").is_dir()

    # The requeued job continued the same MLflow run, which holds each step once.
    from mlflow import MlflowClient

    record = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([record["experiment_id"]])
    assert [r.info.run_id for r in runs] == [record["run_id"]]
    assert runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(record["run_id"], "train/loss")) == list(
        range(10, 61, 10)
    )


def test_a_job_killed_with_sigkill_and_requeued_onto_the_other_node_resumes_and_finishes(
    slurm_cluster: SlurmCluster, tmp_path: Path, prepared: Path
) -> None:
    # 400 train rows / 8 = 50 steps an epoch, 8 epochs: the kill lands after the first checkpoint, long before
    # the end.
    job = launch(
        tmp_path, "--job-name", "killed", "--cpu", "--processes-per-node", "1",
        "--config", TINY, f"data.data_dir={prepared}", "run.num_epochs=8", "checkpoint.every_steps=10",
        *FAST, *NO_TRACKING,
    )  # fmt: skip
    job_id, run_dir = job["train_job"], Path(job["run_dir"])
    wait_for(
        lambda: (run_dir / "checkpoints" / "step_00000010").is_dir(), JOB_TIMEOUT_S, "the first checkpoint"
    )
    first_node = slurm_cluster.job_info(job_id)["NodeList"]
    # As a node failure would: the job's processes die at once, no handler runs (scancel would send SIGTERM
    # first, which the run answers with a checkpoint and a clean exit).
    subprocess.run(["pkill", "-KILL", "-f", f"run_name {run_dir.name}"], check=True, timeout=30)
    slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT_S)
    assert (run_dir / "run.lock").exists(), "a SIGKILLed run leaves its lock"
    other_node = {"node1": "node2", "node2": "node1"}[first_node]
    for command in (["requeuehold", job_id], ["update", f"JobId={job_id}", f"ExcNodeList={first_node}"],
                    ["release", job_id]):  # fmt: skip
        subprocess.run(["scontrol", *command], check=True, timeout=30)

    assert slurm_cluster.wait(job_id, timeout=JOB_TIMEOUT_S) == "COMPLETED"
    info = slurm_cluster.job_info(job_id)
    assert info["NodeList"] == other_node and info["Restarts"] == "1"
    log = Path(job["log"]).read_text()
    assert f"an earlier attempt of SLURM job {job_id}" in log
    assert re.search(r"resumed from \S+step_\d+ at step (\d+)", log) and "training finished" in log
    assert train_steps(run_dir) == list(range(10, 401, 10))
    assert (run_dir / "final").is_dir() and not (run_dir / "run.lock").exists()
