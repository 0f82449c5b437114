"""Bad input: every kind of bad row in strict and quarantine mode, and files that are not FER2013 CSVs."""

from __future__ import annotations

import csv
import gzip
import resource
import subprocess
import sys
from pathlib import Path

import cv2
import datasets
import numpy as np
import pytest

from data_prep.csv_source import MAX_LINE_BYTES, LineCutter, split_lines
from data_prep.manifest import Manifest
from data_prep.prepare import BadRowsError, PrepOptions, prepare
from data_prep.records import PrepError
from data_prep.schema import MANIFEST_NAME, SPLITS
from data_prep.synth import write_synthetic_csv
from emotionnet.cli.prep import main


def _edit_pixels(edit):
    def apply(line: str) -> str:
        label, pixels, usage = line.split(",")
        return f"{label},{edit(pixels)},{usage}"

    return apply


def _replace_first_pixel(token: str):
    return _edit_pixels(lambda pixels: token + pixels[pixels.index(" ") :])


# kind -> (turns a good CSV line into a bad one, the reason the prep must give)
BAD_ROWS = {
    "short row": (_edit_pixels(lambda p: p.rsplit(" ", 1)[0]), "pixels has 2303 values, expected 2304"),
    "long row": (_edit_pixels(lambda p: p + " 7"), "pixels has 2305 values, expected 2304"),
    "value 256": (_replace_first_pixel("256"), "pixel 1 is 256, outside 0..255"),
    "value -1": (_replace_first_pixel("-1"), "pixel 1 is '-1', not an integer in 0..255"),
    "non-integer token": (_replace_first_pixel("1.5"), "pixel 1 is '1.5', not an integer in 0..255"),
    "leading zero": (_replace_first_pixel("007"), "pixel 1 is '007', not a plain integer (leading zero)"),
    "tab separator": (
        _edit_pixels(lambda p: p.replace(" ", "\t", 1)),
        "pixels has 2303 values, expected 2304",
    ),
    "label 7": (lambda line: "7" + line[1:], "emotion '7' is not a class index 0..6"),
    "unknown Usage": (
        lambda line: line.rsplit(",", 1)[0] + ",Validation",
        "Usage 'Validation' is not one of",
    ),
    "missing column": (lambda line: line.rsplit(",", 1)[0], "expected 3 columns, found 2"),
}


def read_lines(csv_path: Path) -> tuple[str, list[str]]:
    header, *rows = csv_path.read_text().splitlines()
    return header, rows


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_strict_names_file_line_and_reason_and_writes_nothing(kind, synth_csv, tmp_path, capsys):
    make_bad, reason = BAD_ROWS[kind]
    header, rows = read_lines(synth_csv)
    rows = rows[:40]
    rows[10] = make_bad(rows[10])  # line 12: header is line 1
    bad_csv = write_csv(tmp_path / "bad.csv", header, rows)

    assert main([str(bad_csv), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad_csv}:12: {reason}" in err
    assert "has 1 invalid row;" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]  # no output, no temp dir


def test_rows_cannot_borrow_values_from_each_other(synth_csv, tmp_path):
    """A long row next to a short one: the block holds the right total of values, but both rows are bad."""
    header, rows = read_lines(synth_csv)
    rows[5] = BAD_ROWS["long row"][0](rows[5])
    rows[6] = BAD_ROWS["short row"][0](rows[6])
    with pytest.raises(BadRowsError) as error:
        prepare(write_csv(tmp_path / "bad.csv", header, rows), tmp_path / "out", PrepOptions(progress=False))
    assert [(row.line, row.reason) for row in error.value.bad_rows] == [
        (7, BAD_ROWS["long row"][1]),
        (8, BAD_ROWS["short row"][1]),
    ]


def test_strict_lists_first_bad_rows_then_a_count(synth_csv, tmp_path):
    header, rows = read_lines(synth_csv)
    bad_lines = list(range(5, 300, 20))  # 15 bad rows spread over the file
    for line in bad_lines:
        rows[line - 2] = BAD_ROWS["label 7"][0](rows[line - 2])
    bad_csv = write_csv(tmp_path / "bad.csv", header, rows)

    with pytest.raises(BadRowsError) as error:
        prepare(bad_csv, tmp_path / "out", PrepOptions(max_errors=3, progress=False, block_bytes=64 << 10))
    assert error.value.count == 15
    assert [row.line for row in error.value.bad_rows] == bad_lines[:3]
    message = str(error.value)
    assert "has 15 invalid rows" in message and "... and 12 more" in message
    assert f"{bad_csv}:{bad_lines[3]}:" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("block_bytes", [64 << 10, 16 << 20], ids=["many_blocks", "one_block"])
def test_quarantine_rejects_exactly_the_bad_rows(block_bytes, synth_csv, tmp_path):
    header, rows = read_lines(synth_csv)
    expected_rejects = {}
    for i, (make_bad, reason) in enumerate(BAD_ROWS.values()):
        index = 7 + 29 * i  # spread over the file (and, with small blocks, over many blocks)
        rows[index] = make_bad(rows[index])
        expected_rejects[index + 2] = (reason, rows[index])
    rows.insert(100, "")  # a blank line: not a row, but it shifts every later line number
    expected_rejects = {(line + (line > 101)): v for line, v in expected_rejects.items()}
    bad_csv = write_csv(tmp_path / "mixed.csv", header, rows)
    out = tmp_path / "out"

    options = PrepOptions(on_bad_rows="quarantine", progress=False, block_bytes=block_bytes)
    manifest = prepare(bad_csv, out, options)

    with open(out / manifest.rejects_file, newline="") as f:
        rejects = list(csv.DictReader(f))
    assert [int(r["line_number"]) for r in rejects] == sorted(expected_rejects)
    for reject in rejects:
        reason, original = expected_rejects[int(reject["line_number"])]
        assert reject["reason"].startswith(reason)
        assert reject["original_line"] == original
    assert manifest.rows_read == 300 == manifest.rows_written + manifest.rows_rejected
    assert manifest.rows_rejected == len(BAD_ROWS)

    loaded = datasets.load_from_disk(str(out))
    kept = np.concatenate([loaded[s]["row_id"] for s in SPLITS if s in loaded])
    all_lines = [n for n in range(2, 303) if n != 102]  # line 102 is the blank one
    assert sorted(kept.tolist()) == sorted(set(all_lines) - set(expected_rejects))
    assert manifest.splits["train"].rows == len(loaded["train"])


def test_quarantine_with_no_good_row_writes_nothing(synth_csv, tmp_path):
    header, rows = read_lines(synth_csv)
    bad_csv = write_csv(tmp_path / "bad.csv", header, [BAD_ROWS["label 7"][0](row) for row in rows[:5]])
    with pytest.raises(PrepError, match="all 5 rows were rejected"):
        prepare(bad_csv, tmp_path / "out", PrepOptions(on_bad_rows="quarantine", progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_quarantine_counts_on_console(synth_csv, tmp_path, capsys):
    header, rows = read_lines(synth_csv)
    rows[3] = BAD_ROWS["value 256"][0](rows[3])
    bad_csv = write_csv(tmp_path / "bad.csv", header, rows)
    out = tmp_path / "out"
    assert main([str(bad_csv), str(out), "--no-progress", "--on-bad-rows", "quarantine"]) == 0
    printed = capsys.readouterr().out
    assert "read 300 rows = written 299 (train 239, validation 30, test 30) + rejected 1" in printed
    assert f"see {out}/rejects.csv" in printed
    assert Manifest.read(out).rows_rejected == 1


def _plain_text_gz(path: Path) -> None:
    path.write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")


def _truncated_gz(path: Path) -> None:
    rows = "".join(f"0,{' '.join(['9'] * 2304)},Training\n" for _ in range(400))
    data = gzip.compress(("emotion,pixels,Usage\n" + rows).encode(), compresslevel=1)
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "empty file": ("empty.csv", lambda p: p.write_bytes(b""), "is empty"),
    "header only": ("header.csv", lambda p: p.write_text("emotion,pixels,Usage\n"), "it has no data rows"),
    "gzip that is not gzip": ("fake.csv.gz", _plain_text_gz, "is not a valid gzip file"),
    "truncated gzip": ("cut.csv.gz", _truncated_gz, "could not be read as a gzip-compressed CSV"),
    "binary file": ("photo.csv", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00" * 50), "not a CSV"),
    "wrong columns": ("cols.csv", lambda p: p.write_text("label,image,split\n1,2,3\n"), "has the header"),
    "extra column": ("extra.csv", lambda p: p.write_text("emotion,pixels,Usage,x\n"), "needs exactly"),
    "missing file": ("absent.csv", lambda p: None, "does not exist"),
    "folder that is not the release": (
        "some_dir",
        lambda p: p.mkdir(),
        "not the FER2013 image-folder release",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_get_one_clear_sentence(kind, tmp_path, capsys):
    name, make, expected = BAD_FILES[kind]
    path = tmp_path / name
    make(path)
    assert main([str(path), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emotionnet-prep: error: ") and "\n" not in err
    assert expected in err and str(path) in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_bad_gzip_at_the_real_cli_edge(tmp_path, run_prep_cli):
    fake = tmp_path / "fake.csv.gz"
    _plain_text_gz(fake)
    result = run_prep_cli(fake, tmp_path / "out", "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"emotionnet-prep: error: {fake} is not a valid gzip file (Not a gzipped file (b'em'))."
    )


def test_image_folder_bad_images(synth_csv, tmp_path):
    root = tmp_path / "release"
    good = np.full((48, 48), 128, dtype=np.uint8)
    for i, name in enumerate(["Training_1.jpg", "Training_2.jpg", "Training_3.jpg"]):
        (root / "train" / "sad").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / "sad" / name), good + i)
    (root / "train" / "sad" / "Training_4.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(root / "train" / "sad" / "Training_5.jpg"), np.zeros((64, 64), np.uint8))
    cv2.imwrite(str(root / "train" / "sad" / "Training_6.jpg"), good)
    cv2.imwrite(str(root / "train" / "sad" / "PublicTest_7.jpg"), good)  # a test image in train/

    with pytest.raises(BadRowsError) as error:
        prepare(root, tmp_path / "strict", PrepOptions(progress=False))
    reasons = {row.text: row.reason for row in error.value.bad_rows}
    assert reasons == {
        "train/sad/Training_4.jpg": "cannot be decoded as an image",
        "train/sad/Training_5.jpg": "image is 64x64, expected 48x48",
        "train/sad/PublicTest_7.jpg": "file name is not Training_<id>.jpg",
    }
    manifest = prepare(root, tmp_path / "quarantine", PrepOptions(on_bad_rows="quarantine", progress=False))
    assert (manifest.rows_read, manifest.rows_written, manifest.rows_rejected) == (7, 4, 3)

    (root / "train" / "bored").mkdir()
    with pytest.raises(PrepError, match="is not one of the class folders"):
        prepare(root, tmp_path / "unknown_class", PrepOptions(progress=False))


def _huge_field(line: bytes) -> bytes:
    label, _, usage = line.split(b",")
    return b",".join([label, b"1 " * 5_000_000 + b"1", usage])  # a 10 MB pixels field


# Lines the reader itself used to fail on (the whole prep, naming no line): kind -> (edit, reason).
UNREADABLE_LINES = {
    "10 MB field": (_huge_field, "line is 10000012 bytes long; no FER2013 row is longer than 65536"),
    "not UTF-8": (lambda line: line[:10] + b"\xff" + line[11:], "byte 0xff at column 11 is not UTF-8 text"),
    "unit separator": (lambda line: line[:10] + b"\x1f" + line[11:], "pixels has 2303 values, expected 2304"),
}


@pytest.mark.parametrize("kind", list(UNREADABLE_LINES))
def test_a_line_the_reader_cannot_take_is_a_bad_row_named_by_its_line(kind, synth_csv, tmp_path, capsys):
    make_bad, reason = UNREADABLE_LINES[kind]
    lines = synth_csv.read_bytes().split(b"\n")
    lines[51] = make_bad(lines[51])  # line 52
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"\n".join(lines))

    assert main([str(bad_csv), str(tmp_path / "strict"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad_csv}:52: {reason}" in err and "has 1 invalid row;" in err
    assert not (tmp_path / "strict").exists()

    # Quarantine sets it aside, and the result does not depend on where the read blocks end.
    kept = {}
    for block_bytes in (64 << 10, 1 << 20, 16 << 20):
        out = tmp_path / f"quarantine-{block_bytes}"
        manifest = prepare(
            bad_csv, out, PrepOptions(on_bad_rows="quarantine", progress=False, block_bytes=block_bytes)
        )
        assert (manifest.rows_read, manifest.rows_rejected) == (300, 1)
        with open(out / manifest.rejects_file, newline="") as f:
            (reject,) = csv.DictReader(f)  # the csv module's default field limit: the text is cut short
        assert reject["line_number"] == "52" and reject["reason"].startswith(reason)
        assert lines[51].decode(errors="replace").startswith(reject["original_line"].removesuffix("..."))
        kept[block_bytes] = {
            path.name: path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()
        }
        kept[block_bytes].pop(MANIFEST_NAME)
    assert kept[64 << 10] == kept[1 << 20] == kept[16 << 20]


def cut_in_reads(data: bytes, read_bytes: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, text) of every line and (line number, reason) of every rejected one, with the file's
    bytes handed to the cutter `read_bytes` at a time."""
    cutter, lines, rejected = LineCutter(), [], []
    for start in range(0, len(data) + read_bytes, read_bytes):  # the last read is empty: the end
        piece = data[start : start + read_bytes]
        text, numbers, bad = split_lines(cutter.cut(piece, final=not piece))
        lines += zip(numbers.tolist(), text.to_pylist(), strict=True)
        rejected += [(row.line, row.reason) for row in bad]
    return lines, rejected


def test_lines_do_not_depend_on_where_the_reads_end():
    long = b"9" * (MAX_LINE_BYTES + 1)
    data = b"emotion,pixels,Usage\r\na\r\n\r\nb\rc\n" + long + b"\r\nd\r" + long + b"\r" + long + b"\ne"
    too_long = f"line is {MAX_LINE_BYTES + 1} bytes long"
    expected_lines = [(2, "a"), (3, ""), (4, "b"), (5, "c"), (7, "d"), (10, "e")]
    for read_bytes in (1, 2, 3, 5, 4096, MAX_LINE_BYTES, MAX_LINE_BYTES + 1, MAX_LINE_BYTES + 2, len(data)):
        if read_bytes < 10:  # byte by byte, only as far as the first long line
            assert cut_in_reads(data[:31], read_bytes) == (expected_lines[:4], [])
            continue
        lines, rejected = cut_in_reads(data, read_bytes)
        assert lines == expected_lines
        assert [line for line, _ in rejected] == [6, 8, 9]
        assert all(reason.startswith(too_long) for _, reason in rejected)


def test_the_quarantine_hint_names_what_the_caller_has(synth_csv, tmp_path, capsys):
    header, rows = read_lines(synth_csv)
    rows[3] = BAD_ROWS["label 7"][0](rows[3])
    bad_csv = write_csv(tmp_path / "bad.csv", header, rows)

    # emotionnet-prep has the flag: it says to use it.
    assert main([str(bad_csv), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "(use --on-bad-rows quarantine to set them aside and convert the rest)" in capsys.readouterr().err
    # Other callers (emotionnet-eval DATA, emotionnet-train --csv_file) do not: the hint is a command that exists.
    with pytest.raises(BadRowsError) as error:
        prepare(bad_csv, tmp_path / "out", PrepOptions(progress=False))
    assert "use --on-bad-rows" not in str(error.value)
    assert f"set them aside with `emotionnet-prep {bad_csv} DIR --on-bad-rows quarantine`" in str(error.value)
    with pytest.raises(BadRowsError, match="or train with --data_dir DIR"):
        prepare(
            bad_csv,
            tmp_path / "out",
            PrepOptions(progress=False, bad_rows_hint="or train with --data_dir DIR"),
        )


def test_a_prep_that_runs_out_of_room_names_the_output_and_leaves_nothing(tmp_path):
    csv = write_synthetic_csv(tmp_path / "s.csv", rows=2000, seed=0)
    out = tmp_path / "out"

    def limit_file_size() -> None:  # past 200 KB a write fails (EFBIG) as it would on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    done = subprocess.run([sys.executable, "-m", "emotionnet.cli.prep", str(csv), str(out)], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_file_size)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"emotionnet-prep: error: {out}: the write ran out of room" in done.stderr
    assert "nothing was written" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]
