"""Atomic, verified, pruned training checkpoints through `accelerator.save_state` (DDP and DeepSpeed).

A checkpoint directory holds Accelerate's state (model, optimizer, scheduler, RNG states), the trainer's
own state as JSON (`trainer_state.json`), extra tensors as safetensors (the EMA weights), and, written
last, `manifest.json`: the size and SHA-256 of every file. A checkpoint is trusted only once its manifest
checks out, and nothing in it is unpickled except through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import RNG_STATE_NAME
from accelerate.utils import load as torch_load_plain_data
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_prep.files import (
    file_sha256,
    no_room_message,
    out_of_room,
    replace_directory,
    tree_bytes,
    write_atomic,
)
from emotionnet.errors import UserError
from emotionnet.run_layout import RunLayout

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
ADDED_LATER = ("identity",)  # trainer-state entries older checkpoints lack: resumed without them


class CheckpointError(UserError):
    """A checkpoint that is incomplete, corrupted, unsafe or saved by a different launch."""


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoint directories of a run (complete or not: see `verify_checkpoint`), oldest first."""
    root = RunLayout(Path(run_dir)).checkpoints
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return RunLayout(Path(run_dir)).checkpoints / f"step_{step:08d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    steps = checkpoint_steps(run_dir)
    return checkpoint_path(run_dir, steps[-1]) if steps else None


def latest_valid_checkpoint(run_dir: Path, num_processes: int) -> Path | None:
    """The newest checkpoint that passes `verify_checkpoint`; each newer one that fails is logged."""
    for step in reversed(checkpoint_steps(run_dir)):
        path = checkpoint_path(run_dir, step)
        try:
            verify_checkpoint(path, num_processes)
        except CheckpointError as err:
            log.warning("skipping checkpoint %s: %s", path, err)
            continue
        return path
    return None


def _rng_state_name(process_index: int) -> str:
    return f"{RNG_STATE_NAME}_{process_index}.pkl"


def write_manifest(directory: Path, step: int, num_processes: int) -> None:
    """Record the size and SHA-256 of every file in `directory` (written last: it vouches for the rest)."""
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"step": step, "num_processes": num_processes, "files": files}
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def verify_checkpoint(path: Path, num_processes: int) -> None:
    """Raise CheckpointError saying why `path` cannot be resumed by a launch of `num_processes`."""
    if not path.is_dir():
        raise CheckpointError("not a directory")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files, saved_by = manifest["files"], manifest["num_processes"]
    except FileNotFoundError:
        raise CheckpointError(
            f"no {MANIFEST} (an incomplete checkpoint, or one from an older version)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{MANIFEST} is unreadable ({type(err).__name__})") from None
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{name} is missing")
        if (size := file.stat().st_size) != expected["size"]:
            raise CheckpointError(f"{name} has {size} bytes, {expected['size']} were written (truncated?)")
        if file_sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{name} does not match its SHA-256 in {MANIFEST} (corrupted)")
    if planted := sorted(p.name for p in path.glob("custom_checkpoint_*")):
        # Accelerate would unpickle these with weights_only=False; this trainer never writes them.
        raise CheckpointError(f"{planted[0]} is a pickle this trainer never writes, refused")
    if TRAINER_STATE not in files:
        raise CheckpointError(f"{MANIFEST} lists no {TRAINER_STATE}")
    if saved_by != num_processes:
        raise CheckpointError(
            f"saved by {saved_by} processes but this launch has {num_processes}: the data order and random "
            f"streams are per process, so resume with {saved_by} processes"
        )
    for index in range(num_processes):
        # Bitwise resume needs every process's RNG state; Accelerate would go on silently without one.
        name = _rng_state_name(index)
        if name not in files:
            raise CheckpointError(f"no random-number state for process {index} ({name})")
        _require_plain_data(path / name)
    if deepspeed_files := [name for name in files if name.endswith(".pt")]:
        # DeepSpeed unpickles these with weights_only=False: they must pass the restricted unpickler first.
        with torch.serialization.safe_globals(_deepspeed_value_types()):
            for name in deepspeed_files:
                _require_plain_data(path / name)


def _deepspeed_value_types() -> list[type]:
    """The value types DeepSpeed pickles into its checkpoints besides tensors (imported only for them)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _require_plain_data(file: Path) -> None:
    """Refuse a pickle that holds more than tensors and plain data (it could run code when loaded)."""
    try:
        torch_load_plain_data(file, map_location="cpu")
    except Exception as err:  # UnpicklingError for a forbidden global, or any other unreadable pickle
        raise CheckpointError(f"{file.name} is not plain tensor data, refused ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


# The lines of `load_state_dict`'s error (torch's, and safetensors' `load_model`, which words it the same).
_KEYS_LINE = re.compile(r"^\s*(Missing|Unexpected) key\(s\) in state_dict: (.*?)\.?\s*$", re.MULTILINE)
_SHAPE_LINE = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[(.*?)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[(.*?)\]\)"
)


def _why_it_does_not_fit(err: BaseException) -> str:
    """One line for the user: for weights of another architecture, the keys and shapes that differ (the
    error lists them on lines that its first line only announces); else the error's first line."""
    text = str(err)
    if not text.startswith("Error(s) in loading state_dict"):
        return _first_line(err)
    where = {"Missing": "missing from the checkpoint", "Unexpected": "in the checkpoint, not in the model"}
    differences = []
    for kind, keys in _KEYS_LINE.findall(text):
        names = [key.strip(' "') for key in keys.split(",")]
        differences.append(f"{where[kind]}: {_some(names)}")
    shapes = [
        f"{name} is ({saved}) in the checkpoint but ({wanted}) in the model"
        for name, saved, wanted in _SHAPE_LINE.findall(text)
    ]
    if shapes:
        differences.append(_some(shapes, separator="; "))
    return f"it holds another architecture ({'; '.join(differences) or _first_line(err)})"


def _some(items: list[str], separator: str = ", ", shown: int = 4) -> str:
    more = f"{separator}and {len(items) - shown} more" if len(items) > shown else ""
    return separator.join(items[:shown]) + more


class CheckpointManager:
    """Checkpoints live in `<run_dir>/checkpoints/step_XXXXXXXX/`.

    Every rank writes into a hidden temp dir (DeepSpeed shards its state per rank); the main process adds
    the trainer state and the manifest and renames it into place once all ranks are done, so a kill at any
    moment leaves either the previous complete checkpoint or the new one, never a partial one under a
    `step_*` name.
    """

    def __init__(
        self, run_dir: Path, accelerator: Accelerator, keep_last: int, every_steps: int | None = None
    ):
        self.run_dir = Path(run_dir)
        self.root = RunLayout(self.run_dir).checkpoints
        self.accelerator = accelerator
        self.keep_last = keep_last
        self.every_steps = every_steps
        self.last_saved_step: int | None = None
        # What the trainer keeps beside Accelerate's state (the same on every rank), saved by the main
        # process: plain values in trainer_state.json, tensors as <name>.safetensors. Never pickled.
        self.json_state: dict[str, Stateful] = {}
        self.tensor_state: dict[str, Stateful] = {}

    def due(self, step: int) -> bool:
        """A periodic checkpoint is due (`checkpoint.every_steps`); epoch ends and stops save anyway."""
        return self.every_steps is not None and step % self.every_steps == 0

    def save(self, step: int, protect: int | None = None) -> Path:
        """Save the full training state at `step`; keep the newest `keep_last` plus `protect` (the best)."""
        self.last_saved_step = step
        final = self.path(step)
        tmp = self.root / f".tmp_step_{step:08d}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        try:
            self._write(tmp, step)
        except BaseException as err:  # a second Ctrl-C, a full disk: no half-written temp dir stays behind
            if self.accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            if out_of_room(err):
                previous = self.latest()
                kept = f"; the previous checkpoint {previous} is intact" if previous else ""
                raise CheckpointError(
                    no_room_message(final, previous and tree_bytes(previous)) + kept
                ) from err
            raise
        if self.accelerator.is_main_process:
            replace_directory(tmp, final)  # a kill never leaves this step without a checkpoint
            self._prune(protect)
        self.accelerator.wait_for_everyone()
        return final

    def _write(self, tmp: Path, step: int) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            for name, obj in self.tensor_state.items():
                tensors = {k: v.detach().cpu().contiguous() for k, v in obj.state_dict().items()}
                save_file(tensors, tmp / f"{name}.safetensors")
            state = {name: obj.state_dict() for name, obj in self.json_state.items()}
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1, sort_keys=True))
            write_manifest(tmp, step, self.accelerator.num_processes)

    def load(self, path: Path) -> None:
        """Restore everything `save` wrote from a verified checkpoint; CheckpointError (one line) when it
        does not fit this model, configuration or launch."""
        try:
            self.accelerator.load_state(str(path))
            state = json.loads((path / TRAINER_STATE).read_text())
            missing = [name for name in self.json_state if name not in state and name not in ADDED_LATER]
            missing += [
                f"{n}.safetensors" for n in self.tensor_state if not (path / f"{n}.safetensors").is_file()
            ]
            if missing:
                raise ValueError(f"it has no {', '.join(missing)} (saved with another configuration?)")
            for name, obj in self.json_state.items():
                if name in state:
                    obj.load_state_dict(state[name])
            for name, obj in self.tensor_state.items():
                obj.load_state_dict(load_file(path / f"{name}.safetensors"))
        except (OSError, RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as err:
            raise CheckpointError(
                f"checkpoint {path} does not fit this run: {_why_it_does_not_fit(err)}"
            ) from err

    def path(self, step: int) -> Path:
        return checkpoint_path(self.run_dir, step)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.run_dir)

    def _prune(self, protect: int | None) -> None:
        for step in checkpoint_steps(self.run_dir)[: -self.keep_last]:
            if step != protect:
                shutil.rmtree(self.path(step), ignore_errors=True)
        for leftover in self.root.glob(".tmp_step_*"):
            shutil.rmtree(leftover, ignore_errors=True)
