"""Stream a FER2013 CSV (plain or gzip) block by block and validate every row, vectorized per block.

pyarrow's streaming reader cuts the (possibly gzipped) file into ~1 MB blocks of whole lines, in C++ and
ahead of use. Each block is validated on a worker thread:
- fast path, for blocks in the original file's exact layout (`3,<pixels>,Training` on every line): label
  and Usage are checked with arrow string kernels, then the labels and Usage words are blanked out and
  numpy parses the whole block's text in one call; checks on counts and digits prove every row held
  exactly 2304 plain integers 0..255;
- general path, for anything else (quotes, other column order, bad rows): arrow splits the fields, the
  pixels are parsed the same way, and a block that fails is bisected to find its bad rows, whose reasons
  are then worked out in Python (bad rows are rare, so the slow part stays small).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from data_prep.records import BadRow, Chunk, PrepError, SourceInfo
from data_prep.schema import IMAGE_SIZE, NUM_CLASSES, NUM_PIXELS, USAGE_TO_SPLIT

EXPECTED_COLUMNS = ("emotion", "pixels", "Usage")
# ~120 FER rows per block. Arrow reads ~16 blocks ahead, so larger blocks cost memory (16 MB: +300 MB RSS)
# and buy no speed.
DEFAULT_BLOCK_BYTES = 1 << 20
_WORKERS = min(4, os.cpu_count() or 1)
_IN_FLIGHT = 2 * _WORKERS
_GZIP_MAGIC = b"\x1f\x8b"
_LABEL_STRINGS = [str(i) for i in range(NUM_CLASSES)]
_LABELS = pa.array(_LABEL_STRINGS)
_LABEL_HEADS = pa.array([f"{label}," for label in _LABEL_STRINGS])
_USAGE_SUFFIXES = [f",{usage}" for usage in USAGE_TO_SPLIT]
_USAGE_SUFFIX_LENGTHS = np.array([len(suffix) for suffix in _USAGE_SUFFIXES])
_USAGES = pa.array(list(USAGE_TO_SPLIT))
_PIXEL_BYTES = b"0123456789 \n"


def is_gzip(path: Path) -> bool:
    """A `.gz` name means gzip (and must be); otherwise sniff the magic bytes."""
    if path.suffix == ".gz":
        return True
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def read_header(path: Path, gzipped: bool) -> list[str]:
    """The CSV's column names, after checking that the file is readable text with the FER2013 columns."""
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            first = f.readline(1 << 20)
    except (gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise PrepError(f"{path} is not a valid gzip file ({e}).") from None
    except OSError as e:
        raise PrepError(f"cannot read {path}: {e.strerror or e}.") from None
    if not first.strip():
        raise PrepError(f"{path} is empty: expected a CSV with the header emotion,pixels,Usage.")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PrepError(f"{path} is not a CSV text file (its first line is not UTF-8 text).") from None
    names = [name.strip().strip('"') for name in text.rstrip("\r\n").split(",")]
    if sorted(names) != sorted(EXPECTED_COLUMNS):
        shown = ",".join(names) if len(text) < 200 else text[:60] + "..."
        raise PrepError(f"{path} has the header {shown!r}; a FER2013 CSV needs exactly emotion,pixels,Usage.")
    return names


class CsvSource:
    """A FER2013 CSV or CSV.gz, read as a stream of validated `Chunk`s."""

    progress_unit = "B"

    def __init__(self, path: Path, block_bytes: int = DEFAULT_BLOCK_BYTES):
        self.path = path
        try:
            self.gzipped = is_gzip(path)
            self.size_bytes = path.stat().st_size
        except OSError as e:
            raise PrepError(f"cannot read {path}: {e.strerror or e}.") from None
        self.columns = read_header(path, self.gzipped)
        self._block_bytes = block_bytes
        self._sha256: str | None = None

    @property
    def progress_total(self) -> int:
        return self.size_bytes  # file bytes (compressed ones for .gz), as reported to `on_bytes_read`

    def info(self) -> SourceInfo:
        """Available once `chunks()` has been consumed (the hash is computed alongside the reading)."""
        assert self._sha256 is not None, "read the chunks first"
        kind = "csv.gz" if self.gzipped else "csv"
        return SourceInfo(str(self.path.resolve()), kind, self.size_bytes, self._sha256)

    def chunks(self, on_bytes_read: Callable[[int], None] = lambda n: None) -> Iterator[Chunk]:
        """Yield the file's rows block by block; `on_bytes_read` gets the count of file bytes consumed."""
        kind = "gzip-compressed CSV" if self.gzipped else "CSV"
        # Arrow reads the file itself (no Python file object: its read-ahead threads must never call back
        # into Python, which can abort the interpreter when it exits mid-read, e.g. after Ctrl-C).
        raw = pa.OSFile(str(self.path))
        stream = pa.CompressedInputStream(raw, "gzip") if self.gzipped else raw
        try:
            with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
                sha256 = pool.submit(_sha256_file, self.path)
                # Whole lines as one column (the delimiter is a control character FER never contains): every
                # line is a row, so line numbers are exact and a rejected row keeps its original text.
                reader = pcsv.open_csv(
                    stream,
                    read_options=pcsv.ReadOptions(
                        block_size=self._block_bytes, skip_rows=1, column_names=["line"]
                    ),
                    parse_options=pcsv.ParseOptions(
                        delimiter="\x1f", quote_char=False, ignore_empty_lines=False
                    ),
                    convert_options=pcsv.ConvertOptions(column_types={"line": pa.string()}),
                )
                # Blocks are validated on a few threads (numpy and arrow release the GIL while parsing)
                # and handed on in file order; at most _IN_FLIGHT blocks are held at once.
                pending: deque[Future[Chunk]] = deque()
                first_line, reported = 2, 0
                for batch in reader:
                    pending.append(pool.submit(self._validate, batch.column(0), first_line))
                    first_line += batch.num_rows
                    on_bytes_read(raw.tell() - reported)
                    reported = raw.tell()
                    if len(pending) >= _IN_FLIGHT:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
                on_bytes_read(self.size_bytes - reported)
                self._sha256 = sha256.result()
        except (pa.ArrowInvalid, OSError) as e:
            raise PrepError(f"{self.path} could not be read as a {kind}: {e}.") from None
        finally:
            stream.close()
            raw.close()

    def _validate(self, lines: pa.StringArray, first_line: int) -> Chunk:
        n = len(lines)
        line_numbers = np.arange(first_line, first_line + n, dtype=np.int64)
        canonical = parse_canonical(lines) if self.columns == list(EXPECTED_COLUMNS) else None
        if canonical is not None:
            labels, splits, images = canonical
            return Chunk(images.reshape(n, IMAGE_SIZE, IMAGE_SIZE), labels, splits, line_numbers)
        blank = pc.binary_length(lines).to_numpy() == 0  # blank lines are not rows
        fields = pc.split_pattern(lines, ",")
        widths = pc.list_value_length(fields).to_numpy()
        rows = np.flatnonzero(widths == len(EXPECTED_COLUMNS))
        complete = fields if len(rows) == n else fields.take(rows)  # the usual case needs no copy
        by_name = {name: _unquote(pc.list_element(complete, k)) for k, name in enumerate(self.columns)}
        labels = _index_in(by_name["emotion"], _LABELS)
        splits = _index_in(by_name["Usage"], _USAGES)
        candidates = np.flatnonzero((labels >= 0) & (splits >= 0))
        pixels = by_name["pixels"] if len(candidates) == len(rows) else by_name["pixels"].take(candidates)
        images, parsed = parse_pixels(pixels)
        if not parsed.all():
            images = images[parsed]
        good = candidates[parsed]  # index into `rows`

        is_good = np.zeros(n, dtype=bool)
        is_good[rows[good]] = True
        position = np.full(n, -1)
        position[rows] = np.arange(len(rows))
        bad_rows = []
        for i in np.flatnonzero(~is_good & ~blank):
            if widths[i] != len(EXPECTED_COLUMNS):
                reason = f"expected {len(EXPECTED_COLUMNS)} columns, found {widths[i]}"
            else:
                reason = row_problem(*(by_name[name][position[i]].as_py() for name in EXPECTED_COLUMNS))
            bad_rows.append(BadRow(int(line_numbers[i]), reason, lines[i].as_py()))
        return Chunk(
            images=images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE),
            labels=labels[good],
            splits=splits[good],
            row_ids=line_numbers[rows[good]],
            bad_rows=bad_rows,
        )


def _index_in(column: pa.Array, values: pa.Array) -> np.ndarray:
    """Position of each entry in `values`, -1 where absent."""
    return pc.fill_null(pc.index_in(column, value_set=values), -1).to_numpy().astype(np.int64)


def _unquote(field: pa.Array) -> pa.Array:
    """Drop the double quotes some writers put around every field (FER fields never contain commas)."""
    quoted = pc.and_(pc.starts_with(field, '"'), pc.ends_with(field, '"'))
    if not pc.any(quoted).as_py():
        return field
    return pc.if_else(quoted, pc.utf8_slice_codeunits(field, 1, -1), field)


def _string_data(strings: pa.Array) -> tuple[np.ndarray, pa.Buffer]:
    """A string array's offsets (n + 1, relative to its first byte) and the buffer holding its characters."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[
        strings.offset : strings.offset + len(strings) + 1
    ]
    return offsets - offsets[0], strings.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def _decode(text: bytes | bytearray, rows: int, other_bytes: int) -> np.ndarray | None:
    """Parse text holding exactly 2304 pixel values per row, separated by whitespace, as (rows, 2304) uint8;
    None unless every value is a plain decimal integer in 0..255. `other_bytes`: the count of bytes in text
    that are neither digits nor the 2303 spaces inside each row. Callers check spaces per row beforehand, so
    a row can never borrow values from its neighbour."""
    if text.translate(None, _PIXEL_BYTES):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy's notice that it stopped at bad text
        values = np.fromstring(text, dtype=np.int16, sep=" ")
    if values.size != rows * NUM_PIXELS or values.min() < 0 or values.max() > 255:
        return None
    # Each token's text is at least as long as its value printed plainly; equal totals mean every token is
    # plain decimal (no leading zeros, nothing that overflowed int16 and wrapped back into range).
    digits = len(text) - rows * (NUM_PIXELS - 1) - other_bytes
    if digits != values.size + np.count_nonzero(values >= 10) + np.count_nonzero(values >= 100):
        return None
    return values.astype(np.uint8).reshape(rows, NUM_PIXELS)


def _parse_all(pixels: pa.Array) -> np.ndarray | None:
    """Every row's pixels as (n, 2304) uint8, or None if any row is not 2304 integers in 0..255."""
    n = len(pixels)
    if not (pc.count_substring(pixels, " ").to_numpy() == NUM_PIXELS - 1).all():
        return None
    _, text = _string_data(pc.binary_join_element_wise(pixels, "", "\n"))  # each row's pixels + "\n"
    return _decode(text.to_pybytes(), n, other_bytes=n)


def parse_canonical(lines: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Fast path for a block whose every line is `<label>,<pixels>,<Usage>` exactly as the original file
    writes it: (labels, split indices, (n, 2304) uint8 pixels) straight from the line text, without
    splitting it into fields; None if any line differs (the general path then handles the block)."""
    n = len(lines)
    labels = _index_in(pc.utf8_slice_codeunits(lines, 0, 2), _LABEL_HEADS)
    splits = np.full(n, -1)
    for index, suffix in enumerate(_USAGE_SUFFIXES):
        splits[pc.ends_with(lines, suffix).to_numpy(zero_copy_only=False)] = index
    if (labels < 0).any() or (splits < 0).any():
        return None
    if not (pc.count_substring(lines, " ").to_numpy() == NUM_PIXELS - 1).all():
        return None
    offsets, data = _string_data(lines)
    text = bytearray(memoryview(data))
    view = np.frombuffer(text, dtype=np.uint8)
    # Blank out the "3," before and the ",Training" after each row's pixels: the spaces left separate rows.
    view[(offsets[:-1, None] + np.arange(2)).ravel()] = ord(" ")
    suffix_lengths = _USAGE_SUFFIX_LENGTHS[splits]
    for length in np.unique(suffix_lengths):
        ends = offsets[1:][suffix_lengths == length]
        view[(ends[:, None] - length + np.arange(length)).ravel()] = ord(" ")
    images = _decode(bytes(text), n, other_bytes=2 * n + int(suffix_lengths.sum()))
    return None if images is None else (labels, splits, images)


def parse_pixels(pixels: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Parse pixel strings: (n, 2304) uint8 values and a mask of the rows that parsed.

    The block is parsed whole; on failure it is bisected, so k bad rows cost O(k log n) small parses."""
    n = len(pixels)
    out = np.zeros((n, NUM_PIXELS), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    pending = [(0, n)] if n else []
    while pending:
        lo, hi = pending.pop()
        values = _parse_all(pixels.slice(lo, hi - lo))
        if values is not None and hi - lo == n:
            return values, np.ones(n, dtype=bool)  # the usual case: no copy
        if values is not None:
            out[lo:hi], ok[lo:hi] = values, True
        elif hi - lo > 1:
            mid = (lo + hi) // 2
            pending += [(mid, hi), (lo, mid)]
    return out, ok


def row_problem(emotion: str, pixels: str, usage: str) -> str:
    """Why a row is invalid, as a short phrase (the first problem found, in column order)."""
    if emotion not in _LABEL_STRINGS:
        return f"emotion {emotion!r} is not a class index 0..{NUM_CLASSES - 1}"
    if usage not in USAGE_TO_SPLIT:
        return f"Usage {usage!r} is not one of {', '.join(USAGE_TO_SPLIT)}"
    return pixel_problem(pixels)


def pixel_problem(pixels: str) -> str:
    """Why a pixels field is not 2304 space-separated integers in 0..255."""
    if not pixels:
        return "pixels is empty"
    tokens = pixels.split(" ")
    if len(tokens) != NUM_PIXELS:
        return f"pixels has {len(tokens)} values, expected {NUM_PIXELS}"
    for k, token in enumerate(tokens, start=1):
        if not (token.isascii() and token.isdigit()):
            return f"pixel {k} is {token!r}, not an integer in 0..255"
        if int(token) > 255:
            return f"pixel {k} is {token}, outside 0..255"
        if len(token) > 1 and token[0] == "0":
            return f"pixel {k} is {token!r}, not a plain integer (leading zero)"
    return f"pixels are not {NUM_PIXELS} integers in 0..255"
