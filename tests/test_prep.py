"""The data-prep stage on valid input: layout, round trip, image folders, determinism, interruption, real data."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import datasets
import numpy as np
import pandas as pd
import pytest
from datasets.table import MemoryMappedTable

from data_prep.manifest import Manifest
from data_prep.prepare import PrepOptions, prepare
from data_prep.schema import CLASS_NAMES, MANIFEST_NAME, SCHEMA_VERSION, USAGE_TO_SPLIT, features
from data_prep.synth import write_synthetic_csv
from data_prep.writer import Sharding, owner_tag
from emotionnet.cli.prep import main
from tests.conftest import REPO_ROOT, SHARED_FER_CSV

QUIET = PrepOptions(progress=False)


def naive_rows(csv_path: Path) -> pd.DataFrame:
    """The CSV parsed the slow, obvious way: the reference the prep output is checked against."""
    frame = pd.read_csv(csv_path)
    frame["image"] = [np.array(text.split(" "), dtype=np.uint8).reshape(48, 48) for text in frame.pixels]
    frame["row_id"] = np.arange(len(frame)) + 2  # header is line 1
    frame["split"] = frame.Usage.map(USAGE_TO_SPLIT)
    return frame


def load_numpy(out_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    loaded = datasets.load_from_disk(str(out_dir))
    return {split: loaded[split].with_format("numpy")[:] for split in loaded}


def file_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in skip
    }


def test_round_trip_splits_labels_pixels(synth_csv, tmp_path):
    out = tmp_path / "prepped"
    manifest = prepare(synth_csv, out, QUIET)
    expected = naive_rows(synth_csv)
    got = load_numpy(out)

    assert sorted(got) == ["test", "train", "validation"]
    for split, rows in expected.groupby("split", sort=False):
        assert np.array_equal(got[split]["image"], np.stack(rows.image))  # every pixel, row by row, in order
        assert np.array_equal(got[split]["label"], rows.emotion.to_numpy())
        assert np.array_equal(got[split]["row_id"], rows.row_id.to_numpy())
        counts = np.bincount(rows.emotion, minlength=7)
        assert manifest.splits[split].rows == len(rows)
        assert manifest.splits[split].classes == dict(zip(CLASS_NAMES, counts.tolist(), strict=True))
    assert (manifest.rows_read, manifest.rows_written, manifest.rows_rejected) == (300, 300, 0)


def test_output_is_datasets_format_memory_mapped(synth_csv, tmp_path):
    out = tmp_path / "prepped"
    prepare(synth_csv, out, PrepOptions(sharding=Sharding(num_shards=3), progress=False))
    loaded = datasets.load_from_disk(str(out))
    train = loaded["train"]
    assert train.features == features()
    assert len(train.cache_files) == 3  # shards, read in place
    assert all(Path(f["filename"]).parent == out / "train" for f in train.cache_files)
    tables = [block for row in train.data.blocks for block in row]  # one per shard
    assert len(tables) == 3 and all(isinstance(t, MemoryMappedTable) for t in tables)  # mapped, not loaded
    assert isinstance(train.features["image"], datasets.Array2D) and train.features["image"].dtype == "uint8"
    # The split metadata is what datasets itself writes, apart from the (deterministic) fingerprint.
    reference = tmp_path / "reference"
    datasets.Dataset.from_dict(train[:5], features=features()).save_to_disk(str(reference), num_shards=3)
    for name in ("dataset_info.json", "state.json"):
        ours = json.loads((out / "train" / name).read_text())
        theirs = json.loads((reference / name).read_text())
        ours.pop("_fingerprint", None), theirs.pop("_fingerprint", None)
        assert ours == theirs


def test_manifest_contents(synth_csv_gz, tmp_path):
    out = tmp_path / "prepped"
    returned = prepare(synth_csv_gz, out, QUIET)
    manifest = Manifest.read(out)
    assert manifest == returned
    assert manifest.source.kind == "csv.gz"
    assert manifest.source.size_bytes == synth_csv_gz.stat().st_size
    assert manifest.source.sha256 == hashlib.sha256(synth_csv_gz.read_bytes()).hexdigest()
    assert manifest.schema_version == SCHEMA_VERSION and manifest.prep_version
    assert manifest.wall_time_s > 0
    assert {split: stats.rows for split, stats in manifest.splits.items()} == {
        "train": 240,
        "validation": 30,
        "test": 30,
    }


def test_sharding_options(synth_csv, tmp_path):
    by_count = prepare(
        synth_csv, tmp_path / "a", PrepOptions(sharding=Sharding(num_shards=4), progress=False)
    )
    by_size = prepare(
        synth_csv, tmp_path / "b", PrepOptions(sharding=Sharding(shard_rows=100), progress=False)
    )
    assert {s: v.shards for s, v in by_count.splits.items()} == {"train": 4, "validation": 4, "test": 4}
    assert {s: v.shards for s, v in by_size.splits.items()} == {"train": 3, "validation": 1, "test": 1}
    assert len(list((tmp_path / "b" / "train").glob("data-*-of-00003.arrow"))) == 3
    a, b = load_numpy(tmp_path / "a"), load_numpy(tmp_path / "b")
    assert all(np.array_equal(a[s]["row_id"], b[s]["row_id"]) for s in a)


def test_deterministic_and_independent_of_read_block_size(synth_csv, tmp_path):
    prepare(synth_csv, tmp_path / "one", QUIET)
    prepare(synth_csv, tmp_path / "two", QUIET)
    # 64 KB blocks: ~8 rows per block, so rows arrive in dozens of pieces instead of one.
    prepare(synth_csv, tmp_path / "small_blocks", PrepOptions(progress=False, block_bytes=64 << 10))
    one = file_hashes(tmp_path / "one", skip=(MANIFEST_NAME,))
    assert any(name.endswith(".arrow") for name in one)
    assert one == file_hashes(tmp_path / "two", skip=(MANIFEST_NAME,))
    assert one == file_hashes(tmp_path / "small_blocks", skip=(MANIFEST_NAME,))


def assert_same_rows(dir_a: Path, dir_b: Path) -> None:
    a, b = load_numpy(dir_a), load_numpy(dir_b)
    assert a.keys() == b.keys()
    for split in a:
        for column in ("image", "label", "row_id"):
            assert np.array_equal(a[split][column], b[split][column])


def test_plain_and_gzip_inputs_give_the_same_rows(synth_csv, synth_csv_gz, tmp_path):
    prepare(synth_csv, tmp_path / "plain", QUIET)
    prepare(synth_csv_gz, tmp_path / "gz", QUIET)
    assert_same_rows(tmp_path / "plain", tmp_path / "gz")


def test_csv_without_a_split_yields_no_such_split(synth_csv, tmp_path):
    frame = pd.read_csv(synth_csv)
    only_train = tmp_path / "train_only.csv"
    frame[frame.Usage == "Training"].to_csv(only_train, index=False)
    manifest = prepare(only_train, tmp_path / "out", QUIET)
    assert list(manifest.splits) == ["train"]
    assert list(datasets.load_from_disk(str(tmp_path / "out"))) == ["train"]


def test_column_order_quotes_and_crlf_do_not_matter(synth_csv, tmp_path):
    frame = pd.read_csv(synth_csv, dtype=str)[["Usage", "pixels", "emotion"]]
    variant = tmp_path / "variant.csv"
    frame.to_csv(variant, index=False, quoting=1, lineterminator="\r\n")  # QUOTE_ALL
    prepare(synth_csv, tmp_path / "original", QUIET)
    prepare(variant, tmp_path / "variant", QUIET)
    assert_same_rows(tmp_path / "original", tmp_path / "variant")


def build_image_folder(csv_path: Path, root: Path) -> Path:
    """Write the CSV's faces as the image-folder release (JPEG, lossy); return a CSV of the decoded JPEGs in
    the release's row order (split, then numeric id), i.e. the CSV that release is equivalent to."""
    frame = naive_rows(csv_path)
    # Ids out of class order and of different widths, so only a numeric sort gets the order right.
    frame["file_id"] = (np.arange(len(frame)) * 37) % 1009 + np.where(np.arange(len(frame)) % 2, 5, 95)
    decoded = []
    for row in frame.itertuples():
        folder = "train" if row.Usage == "Training" else "test"
        path = root / folder / CLASS_NAMES[row.emotion] / f"{row.Usage}_{row.file_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), row.image)
        pixels = " ".join(map(str, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).ravel()))
        decoded.append((list(USAGE_TO_SPLIT).index(row.Usage), row.file_id, row.emotion, pixels, row.Usage))
    (root / "train" / "happy" / ".DS_Store").write_text("finder junk, ignored")
    decoded.sort()
    equivalent = root.parent / "equivalent.csv"
    pd.DataFrame([d[2:] for d in decoded], columns=["emotion", "pixels", "Usage"]).to_csv(
        equivalent, index=False
    )
    return equivalent


def test_image_folder_equals_csv_of_same_images(synth_csv, tmp_path):
    folder = tmp_path / "fer_images"
    equivalent_csv = build_image_folder(synth_csv, folder)
    from_folder = prepare(folder, tmp_path / "from_folder", QUIET)
    prepare(equivalent_csv, tmp_path / "from_csv", QUIET)

    a, b = load_numpy(tmp_path / "from_folder"), load_numpy(tmp_path / "from_csv")
    assert sorted(a) == sorted(b) == ["test", "train", "validation"]
    for split in a:
        for column in ("image", "label", "row_id"):
            assert np.array_equal(a[split][column], b[split][column]), (split, column)
    assert from_folder.source.kind == "image_folder" and from_folder.rows_read == 300
    index = pd.read_csv(tmp_path / "from_folder" / "image_index.csv")
    first_test = index[index.row_id == a["validation"]["row_id"][0]].path.item()
    assert first_test.startswith("test/") and "/PublicTest_" in first_test


def test_existing_output_is_refused_without_overwrite(synth_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(synth_csv), str(out), "--no-progress"]) == 0
    first = file_hashes(out)
    assert main([str(synth_csv), str(out), "--no-progress", "--num-shards", "2"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert file_hashes(out) == first
    assert main([str(synth_csv), str(out), "--no-progress", "--num-shards", "2", "--overwrite"]) == 0
    assert Manifest.read(out).splits["train"].shards == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old copies left behind

    not_ours = tmp_path / "notes"
    not_ours.mkdir()
    (not_ours / "keep.txt").write_text("precious")
    assert main([str(synth_csv), str(not_ours), "--no-progress", "--overwrite"]) == 2
    assert "not an earlier emotionnet-prep output" in capsys.readouterr().err
    assert (not_ours / "keep.txt").read_text() == "precious"


def interrupt_prep_while_writing(tmp_path: Path, sig: signal.Signals) -> tuple[Path, subprocess.Popen, str]:
    """Runs `emotionnet-prep big.csv out` in a child, sends it `sig` once rows are being written; returns
    (out, the finished child, its stderr)."""
    big = write_synthetic_csv(tmp_path / "big.csv", rows=3000, seed=3)
    header, _, body = big.read_bytes().partition(b"\n")
    big.write_bytes(header + b"\n" + body * 4)  # ~100 MB: the prep writes for ~2 s, a window the signal hits
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emotionnet.cli.prep",
            str(big),
            str(out),
            "--no-progress",
            "--num-shards",
            "1",
        ],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as in a terminal: a suite started as a background job (`make test &`, nohup) passes on
        # an ignored SIGINT, and Python then installs no KeyboardInterrupt handler (rightly: ignored it stays).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while (
        not list(tmp_path.glob(".out.partial-*/.staging/*"))
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.005)
    assert process.poll() is None, "prep finished before it could be interrupted"
    os.kill(process.pid, sig)
    _, stderr = process.communicate(timeout=60)
    return out, process, stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_prep_leaves_nothing_at_target(tmp_path, sig):
    out, process, stderr = interrupt_prep_while_writing(tmp_path, sig)
    assert process.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    assert not out.exists()
    if sig != signal.SIGKILL:  # a catchable signal also removes the temp dir
        assert "interrupted; nothing was written" in stderr and "Traceback" not in stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]


def test_a_later_prep_removes_what_a_killed_one_left(synth_csv, tmp_path, capsys):
    out, _, _ = interrupt_prep_while_writing(tmp_path, signal.SIGKILL)
    (killed,) = tmp_path.glob(".out.partial-*")  # SIGKILL leaves the temp dir: nothing can remove it then
    # Temp dirs of preps that are alive (this process), of another machine's prep (on a shared file
    # system: nothing here can tell whether it lives), and of a process whose pid was reused since.
    alive = tmp_path / f".out.partial-{owner_tag()}-0a1b2c"
    elsewhere = tmp_path / ".out.partial-elsewhere-4242-1700000000-0a1b2c"
    host, pid, _ = owner_tag().split("-")
    reused = tmp_path / f".out.partial-{host}-{pid}-1700000000-0a1b2c"
    unowned = tmp_path / ".out.partial-0a1b2c3d4e5f"  # named before temp dirs recorded their owner
    for path in (alive, elsewhere, reused, unowned):
        path.mkdir()

    assert main([str(synth_csv), str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert not killed.exists() and not reused.exists()
    assert alive.exists() and elsewhere.exists() and unowned.exists()
    assert f"{unowned} was left by an earlier prep that recorded no owner: remove it by hand" in err
    assert f"removed {killed}, left by a prep (pid " in err and f"removed {reused}," in err
    assert Manifest.read(out).rows_written == 300

    # Killed between moving its previous output aside and moving the new one in: that output goes back.
    again = tmp_path / "again"
    moved_aside = tmp_path / f".again.old-{host}-{pid}-1700000000-0a1b2c"
    os.replace(out, moved_aside)
    assert main([str(synth_csv), str(again), "--no-progress"]) == 2
    assert f"restored {again} from {moved_aside}" in capsys.readouterr().err
    assert Manifest.read(again).rows_written == 300 and not moved_aside.exists()


def test_cli_prints_summary_and_progress(synth_csv, tmp_path, run_prep_cli):
    result = run_prep_cli(synth_csv, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "read 300 rows = written 300 (train 240, validation 30, test 30) + rejected 0" in result.stdout
    assert "prep fer_synth.csv" in result.stderr and "100%" in result.stderr  # tqdm bar on stderr


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_FER_CSV.exists(), reason=f"{SHARED_FER_CSV} not present")
def test_real_fer2013_dev_csv(tmp_path):
    manifest = prepare(SHARED_FER_CSV, tmp_path / "fer", QUIET)
    train_counts = [3995, 436, 4097, 7215, 4830, 3171, 4965]
    validation_counts = [467, 56, 496, 895, 653, 415, 607]
    assert manifest.splits["train"].rows == 28_709
    assert manifest.splits["validation"].rows == 3_589
    assert "test" not in manifest.splits  # PrivateTest is held out of the shared copy
    assert list(manifest.splits["train"].classes.values()) == train_counts
    assert list(manifest.splits["validation"].classes.values()) == validation_counts
    assert (manifest.rows_read, manifest.rows_rejected) == (32_298, 0)

    loaded = datasets.load_from_disk(str(tmp_path / "fer"))
    head = pd.read_csv(SHARED_FER_CSV, nrows=3)
    first = loaded["train"].with_format("numpy")[:3]
    for i, text in enumerate(head.pixels):
        assert np.array_equal(first["image"][i].ravel(), np.array(text.split(), dtype=np.uint8))
    assert first["row_id"].tolist() == [2, 3, 4]
    assert loaded["validation"][0]["row_id"] == 28_709 + 2
