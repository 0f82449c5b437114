"""`emotionnet-launch` without running anything: --dry-run commands as accelerate itself reads them, rendered
batch scripts, and one clear sentence for options that do not fit together."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser

from emotionnet.cli.launch import main
from launcher import slurm
from launcher.accelerate_cmd import LaunchError, LaunchOptions
from launcher.commands import slurm_parser

TRAIN_ARGS = ["--config", "tests/configs/tiny.yaml", "optim.lr=1e-3"]


def dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    """Runs `emotionnet-launch ARGS --dry-run TRAIN_ARGS`: (the command line, the resolved configs)."""
    assert main([*args, "--dry-run", *TRAIN_ARGS]) == 0
    command, _, configs = capsys.readouterr().out.partition("\n")
    return command, configs


def accelerate_reads(command: str):
    """What `accelerate launch` makes of the command: its own parser, then its own option resolution
    (config file + flags), which is where a wrong combination would show."""
    words = shlex.split(command)
    env = {}
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:2] == ["accelerate", "launch"]
    args = launch_command_parser().parse_args(words[2:])
    resolved, _, _ = _validate_launch_command(args)
    assert resolved.module and resolved.training_script == "emotionnet.cli.train"
    assert resolved.training_script_args == TRAIN_ARGS
    return resolved, env


@pytest.mark.parametrize(
    ("args", "config_file", "processes", "kind", "precision"),
    [
        (["--gpus", "2"], "ddp.yaml", 2, "multi_gpu", "bf16"),
        (["--gpus", "1"], "single.yaml", 1, "single", "bf16"),
        (["--gpus", "4", "--strategy", "deepspeed-zero2", "--precision", "fp16"], "deepspeed_zero2.yaml", 4, "deepspeed", "fp16"),
        (["--gpus", "2", "--strategy", "deepspeed-zero3"], "deepspeed_zero3.yaml", 2, "deepspeed", "bf16"),
        (["--gpus", "1", "--strategy", "deepspeed-zero2"], "deepspeed_zero2.yaml", 1, "deepspeed", "bf16"),
        (["--cpu", "--processes", "3"], "cpu_multiprocess.yaml", 3, "multi_cpu", "no"),
        (["--cpu", "--processes", "1"], "single.yaml", 1, "cpu", "no"),
    ],
)  # fmt: skip
def test_dry_run_prints_a_command_accelerate_accepts(
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    config_file: str,
    processes: int,
    kind: str,
    precision: str,
) -> None:
    command, configs = dry_run(capsys, *args)

    resolved, env = accelerate_reads(command)
    assert Path(resolved.config_file).name == config_file
    assert (resolved.num_processes, resolved.num_machines, resolved.mixed_precision) == (
        processes,
        1,
        precision,
    )
    assert resolved.multi_gpu == (kind in ("multi_gpu", "multi_cpu"))
    assert resolved.use_deepspeed == (kind == "deepspeed")
    assert resolved.cpu == (kind == "cpu")
    # Several CPU processes run under torchrun and need ACCELERATE_USE_CPU to form a gloo group.
    assert env == ({"ACCELERATE_USE_CPU": "true"} if kind in ("cpu", "multi_cpu") else {})
    if kind == "deepspeed":
        assert Path(resolved.deepspeed_config_file).is_file()
        assert '"stage": ' + config_file[len("deepspeed_zero")] in configs
    shown = yaml.safe_load(configs.split("# DeepSpeed config")[0])
    assert shown["num_processes"] == processes and shown["mixed_precision"] == precision


def test_dry_run_for_one_node_of_several(capsys: pytest.CaptureFixture[str]) -> None:
    command, configs = dry_run(
        capsys,
        "--gpus",
        "8",
        "--nodes",
        "2",
        "--node-rank",
        "1",
        "--main-address",
        "10.0.0.7",
        "--main-port",
        "29400",
    )

    resolved, _ = accelerate_reads(command)
    assert Path(resolved.config_file).name == "ddp_multinode.yaml"
    assert (resolved.num_processes, resolved.num_machines, resolved.machine_rank) == (16, 2, 1)
    assert (resolved.main_process_ip, resolved.main_process_port) == ("10.0.0.7", 29400)
    assert "main_process_ip: 10.0.0.7" in configs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu", "--precision", "fp16"], "fp16 needs a GPU"),
        (["--gpus", "1", "--strategy", "deepspeed-zero3"], "ZeRO-3 shards parameters across processes"),
        (["--cpu", "--strategy", "deepspeed-zero2"], "needs GPUs; with --cpu use --strategy ddp"),
        (["--gpus", "99"], "asks for more GPUs than the"),
        (["--cpu", "--gpus", "2"], "--gpus and --cpu exclude each other"),
        (["--processes", "2"], "--processes counts CPU processes"),
        (["--gpus", "2", "--nodes", "2", "--node-rank", "0"], "--nodes > 1 needs --main-address"),
        (["--cpu", "--nodes", "2", "--node-rank", "2", "--main-address", "h", "--main-port", "1"], "--node-rank 2 is outside 0..1"),
        (["slurm", "--cpu", "--run_name", "x"], "--run_name is set by the batch script"),
        (["slurm", "--cpu", "run.output_dir=/x"], "run.output_dir=/x is set by the batch script"),
        (["slurm", "--cpu", "--prep", "a.csv"], "--prep INPUT and --data-dir DIR go together"),
        (["slurm", "--gpus", "2", "--cpu"], "--gpus and --cpu exclude each other"),
        (["slurm", "--cpu", "--signal-lead-s", "60"], "--signal-lead-s 60 must exceed --stop-grace-s 240"),
        (["slurm", "--cpu", "--", "--config", "tests/configs/tiny.yaml", "optim.nope=1"], "optim.nope"),
    ],
)  # fmt: skip
def test_options_that_do_not_fit_get_one_sentence(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # No --dry-run: the hardware check (--gpus 99) happens before anything would be launched.
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("emotionnet-launch: error: ") and captured.err.count("\n") == 1
    assert message in captured.err


def render_slurm(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["slurm", *args, "--dry-run", *TRAIN_ARGS]) == 0
    return capsys.readouterr().out


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_slurm_dry_run_renders_the_batch_script_for_gpu_nodes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = render_slurm(
        capsys, "--nodes", "4", "--gpus-per-node", "8", "--strategy", "deepspeed-zero2", "--partition", "gpu",
        "--account", "proj42", "--time", "12:00:00", "--job-name", "fer", "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip

    assert directives(script) == [
        "--job-name=fer",
        f"--chdir={Path.cwd()}",
        "--partition=gpu",
        "--account=proj42",
        f"--output={tmp_path / 'logs'}/%x-%j.out",
        "--nodes=4",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--cpus-per-task=32",
        "--time=12:00:00",
        "--open-mode=append",
        "--requeue",
        "--signal=B:USR1@300",
    ]
    accelerate_args = (
        "ACCELERATE_ARGS=(--config_file configs/accelerate/deepspeed_zero2.yaml "
        "--deepspeed_config_file configs/deepspeed/zero2.json --mixed_precision bf16)"
    )
    assert accelerate_args in script.splitlines()
    assert "TRAIN_ARGS=(--config tests/configs/tiny.yaml optim.lr=1e-3)" in script.splitlines()
    assert "PROCS_PER_NODE=8" in script.splitlines()
    assert "RUN_NAME=$SLURM_JOB_NAME-$SLURM_JOB_ID" in script.splitlines()
    # The node rank is left for each node's task to expand.
    assert """exec accelerate launch --machine_rank "$SLURM_NODEID" "$@"'""" in script
    assert "# MLflow: sqlite:///" in script
    path = tmp_path / "rendered.sbatch"
    path.write_text(script.rpartition("# MLflow:")[0])
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_slurm_dry_run_with_prep_renders_both_jobs_for_cpu(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = render_slurm(
        capsys, "--cpu", "--processes-per-node", "2", "--prep", str(tmp_path / "s.csv"), "--synthetic-rows", "300",
        "--data-dir", str(tmp_path / "data"), "--run-name", "demo",
    )  # fmt: skip

    prep, _, train = out.partition("# ---- training job")
    assert not [d for d in directives(out) if d.startswith("--gpus")]
    assert "--cpus-per-task=2" in directives(train)
    assert "export ACCELERATE_USE_CPU=true" in train.splitlines()
    assert (
        f"TRAIN_ARGS=(--config tests/configs/tiny.yaml optim.lr=1e-3 data.data_dir={tmp_path / 'data'})"
        in train
    )
    assert "RUN_NAME=demo" in train.splitlines()
    assert f"PREP_ARGS=({tmp_path / 's.csv'} {tmp_path / 'data'})" in prep.splitlines()
    assert "SYNTH_ROWS=300" in prep.splitlines()
    assert "--job-name=emotionnet-prep" in directives(prep)


@pytest.mark.parametrize("script", ["slurm/train.sbatch", "slurm/prep.sbatch"])
def test_batch_scripts_are_valid_bash(script: str) -> None:
    subprocess.run(["bash", "-n", script], check=True)


INJECTED = "\ntouch pwned"  # a newline would start a line of its own in the batch script


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--job-name", "fer" + INJECTED], "argument --job-name: 'fer\\ntouch pwned' contains the control character '\\n'"),
        (["--partition", "gpu" + INJECTED], "argument --partition: 'gpu\\ntouch pwned' contains the control"),
        (["--time", "12:00:00" + INJECTED], "argument --time: '12:00:00\\ntouch pwned' contains the control"),
        (["--account", "proj\r42"], "argument --account: 'proj\\r42' contains the control character '\\r'"),
        (["--job-name", "fer --uid=0"], "argument --job-name: 'fer --uid=0' is not a name"),  # a 2nd sbatch option
        (["--job-name", "../escape"], "argument --job-name: '../escape' is not a name"),
        (["--run-name", "../../escape"], "argument --run-name: '../../escape' is not a name"),
        (["--time", "tomorrow"], "'tomorrow' is not a SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH,"),
        (["--time", "12:61:00"], "'12:61:00' has a field out of range"),
        (["--time", "1-24"], "'1-24' has a field out of range"),
        (["--time", "0"], "'0' is no time at all"),
        (["--time", "4"], "--time 4 (240 s) must exceed --signal-lead-s 300"),
        (["--nodes", "0"], "argument --nodes: 0 is not a positive count"),
        (["--gpus-per-node", "-1"], "argument --gpus/--gpus-per-node: -1 is not a positive count"),
        (["--cpus-per-task", "0"], "argument --cpus-per-task: 0 is not a positive count"),
        (["--stop-grace-s", "0"], "argument --stop-grace-s: 0 is not a positive count"),
        (["--nodes", "two"], "argument --nodes: 'two' is not an integer"),
        (["--log-dir", "logs/my runs"], "argument --log-dir: 'logs/my runs' contains whitespace"),
        (["--log-dir", "logs/%u"], "argument --log-dir: 'logs/%u' contains '%'"),
        (["--venv", "/opt/venv" + INJECTED], "argument --venv: '/opt/venv\\ntouch pwned' contains the control"),
        (["--output-dir", "out" + INJECTED], "argument --output-dir: 'out\\ntouch pwned' contains the control"),
        (["--", "--config", "tests/configs/tiny.yaml", "optim.lr=1e-3" + INJECTED], "'optim.lr=1e-3\\ntouch pwned' contains the control"),
    ],
)  # fmt: skip
def test_slurm_refuses_values_that_would_inject_into_the_batch_script(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    # Not a dry run: before the fix the script was rendered, written to --log-dir and handed to sbatch.
    logs = tmp_path / "logs"
    argv = ["slurm", "--cpu", "--log-dir", str(logs), *TRAIN_ARGS[:2], *args]
    if "--log-dir" in args:
        argv = ["slurm", "--cpu", *TRAIN_ARGS[:2], *args]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("emotionnet-launch") and captured.err.count("\n") == 1
    assert message in captured.err
    assert not logs.exists() and not (tmp_path / "logs" / "my runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--main-port", "0"], "argument --main-port: 0 is not a port in 1..65535"),
        (["--main-port", "65536"], "argument --main-port: 65536 is not a port in 1..65535"),
        (["--processes", "0"], "argument --processes/--processes-per-node: 0 is not a positive count"),
        (["--nodes", "2", "--node-rank", "1", "--main-port", "29500", "--main-address", "10.0.0.1" + INJECTED], "argument --main-address: '10.0.0.1\\ntouch pwned' contains the control"),
        (["--module", "emotionnet.train;touch pwned"], "argument --module: 'emotionnet.train;touch pwned' is not a Python module name"),
        (["--", "--config", "tiny.yaml" + INJECTED], "'tiny.yaml\\ntouch pwned' contains the control"),
    ],
)  # fmt: skip
def test_local_launch_refuses_values_that_would_inject_into_the_command(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["--cpu", "--dry-run", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # before the fix, the dry run printed the command with the value in it
    assert captured.err.startswith("emotionnet-launch") and captured.err.count("\n") == 1
    assert message in captured.err


@pytest.mark.parametrize("limit", ["600", "90:30", "12:00:00", "2-12", "2-12:30", "2-12:30:15"])
def test_slurm_accepts_every_time_format_of_sbatch(limit: str) -> None:
    args, _ = slurm_parser().parse_known_args(["--time", limit])
    script = slurm.render_train(
        slurm.SlurmOptions(launch=LaunchOptions(procs_per_node=2, cpu=True), time=args.time)
    )
    assert f"--time={limit}" in directives(script)


def test_rendering_refuses_a_control_character_that_bypassed_the_options() -> None:
    """The library path (SlurmOptions built in code) is checked where the script is rendered."""
    opts = slurm.SlurmOptions(launch=LaunchOptions(procs_per_node=1, cpu=True), job_name="fer" + INJECTED)
    with pytest.raises(LaunchError, match="control character"):
        slurm.render_train(opts)
