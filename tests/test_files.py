"""The shared file helpers: a file's SHA-256, and atomic replacement of a file."""

from __future__ import annotations

import hashlib
import stat

import pytest

from data_prep.files import atomic_file, file_sha256, write_atomic


def test_file_sha256_is_the_digest_of_the_file_bytes(tmp_path):
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 20_000  # over one 4 MiB read
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_write_atomic_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    write_atomic(path, "new text\n")
    write_atomic(tmp_path / "image.png", b"\x89PNG")
    assert path.read_text() == "new text\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png", "report.json"]


def test_write_atomic_sets_the_mode(tmp_path):
    write_atomic(tmp_path / "plain.txt", "x")
    write_atomic(tmp_path / "job.sbatch", "#!/bin/bash\n", mode=0o755)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "job.sbatch").stat().st_mode) == 0o755


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
