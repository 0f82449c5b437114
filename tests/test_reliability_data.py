"""Prepared data under corruption: the manifest records every shard's size and SHA-256; loads check the
sizes and the row counts, `emotionnet-prep --verify`, `emotionnet-eval` and the start of a training run check
the hashes, and
a damaged shard is one sentence naming the file and the fix. docs/reliability.md lists each promise with
its test here."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from data_prep.manifest import Manifest
from data_prep.schema import MANIFEST_NAME
from emotionnet.cli.eval import main as eval_main
from emotionnet.cli.prep import main as prep_main
from emotionnet.data.loaders import load_splits
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.source import prepared_cache
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode
from emotionnet.inference.export import save_export
from emotionnet.model.emotionnet import EmotionNet
from tests.test_reliability_train import train
from tests.training_utils import TINY_MODEL, prepared_synthetic

RUN = ("--run_name", "r", "run.max_steps=1")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return prepared_synthetic(tmp_path_factory.mktemp("integrity"), rows=120, seed=4)


@pytest.fixture
def prepared(pristine, tmp_path) -> Path:
    """A private copy of the prepared dataset, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "prepared"))


def train_shard(prepared: Path) -> Path:
    (shard,) = sorted((prepared / "train").glob("*.arrow"))
    return shard


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_the_manifest_records_each_shards_size_and_sha256(pristine):
    manifest = Manifest.read(pristine)
    shards = [shard for stats in manifest.splits.values() for shard in stats.files]
    assert sorted(shard.name for shard in shards) == sorted(
        str(path.relative_to(pristine)) for path in pristine.rglob("*.arrow")
    )
    for shard in shards:
        data = (pristine / shard.name).read_bytes()
        assert (shard.bytes, shard.sha256) == (len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("damage", "problem"),
    [(truncate, r"it is \d+ bytes but the manifest records \d+"),
     (lambda path: flip_byte(path, 100), "its SHA-256 is not the one the manifest records"),
     (lambda path: path.unlink(), "it is missing")],
    ids=["truncated", "flipped in its header", "deleted"],
)  # fmt: skip
def test_a_damaged_shard_is_named_on_load_with_the_fix(prepared, damage, problem):
    shard = train_shard(prepared)
    damage(shard)
    with pytest.raises(
        UserError, match=rf"{shard}: {problem}.*; re-run `emotionnet-prep .* {prepared} --overwrite`"
    ) as err:
        load_splits(prepared)
    assert "\n" not in str(err.value) and err.value.exit_code == ExitCode.BAD_INPUT


def test_a_byte_flipped_in_the_pixels_fails_the_hash_check_of_prep_verify(prepared, capsys):
    assert prep_main(["--verify", str(prepared)]) == ExitCode.OK
    assert "3 splits, 3 shards" in capsys.readouterr().out
    shard = train_shard(prepared)
    flip_byte(shard, shard.stat().st_size // 2)  # a pixel: the shard still loads, and would train silently
    load_splits(prepared)  # sizes are checked on every load, hashes only where asked
    assert prep_main(["--verify", str(prepared)]) == ExitCode.BAD_INPUT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"emotionnet-prep: error: {shard}: its SHA-256 is not the one the manifest records"
    )
    assert f"re-run `emotionnet-prep {Manifest.read(prepared).source.path} {prepared} --overwrite`" in line


def test_a_training_run_checks_the_hashes_once_at_start_unless_told_not_to(prepared, tmp_path, capsys):
    shard = train_shard(prepared)
    flip_byte(shard, shard.stat().st_size // 2)
    code, _ = train(prepared, tmp_path / "out", *RUN)
    assert code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"emotionnet-train: error: {shard}: its SHA-256 is not" in err
    assert not (tmp_path / "out" / "r").exists()  # refused before the run directory was made
    code, _ = train(prepared, tmp_path / "out", *RUN, "data.verify_hashes=false")
    assert code == ExitCode.OK  # deliberately skipped: the flipped pixel trains


def test_an_evaluation_checks_the_hashes_of_the_data_it_scores(prepared, tmp_path, capsys):
    model = tmp_path / "model"
    save_export(model, EmotionNet(TINY_MODEL).state_dict(), TINY_MODEL, Preprocessing())
    args = [str(model), str(prepared), "--no-progress", "--confusion-png", str(tmp_path / "c.png")]
    assert eval_main(args) == ExitCode.OK
    shard = sorted((prepared / "validation").glob("*.arrow"))[0]
    flip_byte(shard, shard.stat().st_size // 2)  # a pixel: it would be scored silently
    capsys.readouterr()
    assert eval_main(args) == ExitCode.BAD_INPUT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"emotionnet-eval: error: {shard}: its SHA-256 is not the one the manifest records"
    )


def test_row_counts_in_the_manifest_are_checked_against_the_shards(prepared):
    manifest = json.loads((prepared / MANIFEST_NAME).read_text())
    manifest["splits"]["validation"]["rows"] += 5
    (prepared / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(
        UserError, match=rf"{prepared}: split 'validation' has \d+ rows but its manifest records \d+"
    ):
        load_splits(prepared)


def test_a_manifest_from_before_shard_records_loads_with_a_warning_and_verify_refuses_it(
    prepared, caplog, capsys
):
    manifest = json.loads((prepared / MANIFEST_NAME).read_text())
    for stats in manifest["splits"].values():
        del stats["files"]
    (prepared / MANIFEST_NAME).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        assert set(load_splits(prepared)) == {"train", "validation", "test"}
    assert any("records no shard sizes or hashes" in r.getMessage() for r in caplog.records)
    assert prep_main(["--verify", str(prepared)]) == ExitCode.BAD_INPUT
    assert "records no shard sizes or hashes" in capsys.readouterr().err


def test_a_cached_prep_from_before_shard_records_is_prepared_again(pristine, tmp_path):
    csv = pristine.parent / "synth.csv"
    cached = prepared_cache(csv, tmp_path / "cache")
    manifest = json.loads((cached / MANIFEST_NAME).read_text())
    for stats in manifest["splits"].values():
        del stats["files"]
    (cached / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert prepared_cache(csv, tmp_path / "cache") == cached
    assert Manifest.read(cached).records_shards
