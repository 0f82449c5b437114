"""Stream a FER2013 CSV (plain or gzip) block by block and validate every row, vectorized per block.

The (possibly gzipped) file is read by arrow, ~1 MB at a time and ahead of use, and cut into blocks of whole
lines (`LineCutter`). Every line is a row, whatever it holds: one too long to be a FER2013 row (a 10 MB field)
or one that is not UTF-8 is a bad row with its line number like any other, and the cut never depends on
where the read blocks end. Each block is validated on a worker thread:
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
import os
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.files import file_sha256
from data_prep.records import BadRow, Chunk, PrepError, SourceInfo
from data_prep.schema import IMAGE_SIZE, NUM_CLASSES, NUM_PIXELS, USAGE_TO_SPLIT

EXPECTED_COLUMNS = ("emotion", "pixels", "Usage")
# ~120 FER rows per block; larger blocks cost memory (blocks in flight) and buy no speed.
DEFAULT_BLOCK_BYTES = 1 << 20
_WORKERS = min(4, os.cpu_count() or 1)
_IN_FLIGHT = 2 * _WORKERS
_READ_AHEAD = 4  # blocks read (and decompressed) by the reader thread ahead of use
# A FER2013 row is under 10 KB (2304 values of up to 3 digits). A longer line is rejected by its length,
# and only its first _KEPT_BYTES are held: memory stays bounded whatever the line's size.
MAX_LINE_BYTES = 1 << 16
_KEPT_BYTES = 1000
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
        # Arrow reads the file itself (no Python file object), on one reader thread: reads stay in order.
        raw = pa.OSFile(str(self.path))
        stream = pa.CompressedInputStream(raw, "gzip") if self.gzipped else raw

        def read() -> tuple[bytes, int]:
            return stream.read(self._block_bytes), raw.tell()

        try:
            with (
                ThreadPoolExecutor(max_workers=_WORKERS) as pool,
                ThreadPoolExecutor(max_workers=1) as reader,
            ):
                sha256 = pool.submit(file_sha256, self.path)
                reads = deque(reader.submit(read) for _ in range(_READ_AHEAD))
                cutter = LineCutter()
                # Blocks are validated on a few threads (numpy and arrow release the GIL while parsing)
                # and handed on in file order; at most _IN_FLIGHT blocks are held at once.
                pending: deque[Future[Chunk]] = deque()
                reported, done = 0, False
                while not done:
                    data, position = reads.popleft().result()
                    done = not data
                    reads.append(reader.submit(read))
                    block = cutter.cut(data, final=done)
                    if block.text or block.rejected:
                        pending.append(pool.submit(self._validate, block))
                    on_bytes_read(position - reported)
                    reported = position
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

    def _validate(self, block: LineBlock) -> Chunk:
        lines, line_numbers, unreadable = split_lines(block)
        n = len(lines)
        canonical = parse_canonical(lines) if n and self.columns == list(EXPECTED_COLUMNS) else None
        if canonical is not None:
            labels, splits, images = canonical
            return Chunk(images.reshape(n, IMAGE_SIZE, IMAGE_SIZE), labels, splits, line_numbers, unreadable)
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
            bad_rows=sorted(unreadable + bad_rows, key=lambda row: row.line),
        )


@dataclass(frozen=True)
class LineBlock:
    """Whole lines of the file, from line number `first_line` on: line i is `text[starts[i]:ends[i]]` (no
    terminator), where starts = [0, *nexts[:-1]]; plus the over-long lines skipped just before `text`."""

    text: bytes
    first_line: int
    ends: np.ndarray
    nexts: np.ndarray  # where the line after each one starts (past its "\n", "\r\n" or lone "\r")
    rejected: list[BadRow]


def _too_long(line: int, length: int, head: bytes) -> BadRow:
    reason = f"line is {length} bytes long; no FER2013 row is longer than {MAX_LINE_BYTES}"
    return BadRow(line, reason, head[:_KEPT_BYTES].decode("utf-8", "replace") + "...")


def _line_ends(data: bytes, final: bool) -> tuple[np.ndarray, np.ndarray]:
    """Where the lines in data end, and where the next ones start: "\n", "\r\n" and a lone "\r" each end a
    line (as in any CSV reader). A "\r" that is data's last byte ends one only if `final`: otherwise it may
    be the first half of a "\r\n" that the next read completes."""
    view = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(view == ord("\n"))
    if b"\r" not in data:  # the usual case
        return newlines, newlines + 1
    returns = np.flatnonzero(view == ord("\r"))
    inside = returns + 1 < len(view)
    pairs = inside & (view[np.minimum(returns + 1, len(view) - 1)] == ord("\n"))
    lone = ~pairs & (inside | final)
    newlines = newlines[~np.isin(newlines, returns[pairs] + 1)]  # a pair's "\n" ends no line of its own
    ends = np.concatenate([newlines, returns[pairs], returns[lone]])
    nexts = np.concatenate([newlines + 1, returns[pairs] + 2, returns[lone] + 1])
    order = np.argsort(ends)
    return ends[order], nexts[order]


class LineCutter:
    """Cuts the file's bytes, read by read, into `LineBlock`s of whole lines, skipping the header.

    Nothing may depend on where the reads end: a line longer than MAX_LINE_BYTES that is unfinished at the
    end of a read is not carried on but skipped to its end, keeping its first bytes and its length, and is
    rejected exactly as `split_lines` rejects a long line that lies within one block."""

    def __init__(self) -> None:
        self._carry = b""  # an unfinished line (at most MAX_LINE_BYTES, plus perhaps a "\r" held back)
        self._line = 1  # number of the next line to end
        # The unfinished line being skipped, if any: its first bytes and its length so far; first the header.
        self._skipping: tuple[bytes, int] | None = (b"", 0)
        self._header = True

    def cut(self, data: bytes, final: bool) -> LineBlock:
        """The next block, given the next bytes read (`final`: there are no more)."""
        data = self._carry + data if self._carry else data
        ends, nexts = _line_ends(data, final)
        rejected = []
        if self._skipping is not None:
            head, length = self._skipping
            if len(ends) == 0 and not final:
                held = int(data.endswith(b"\r"))
                self._skipping, self._carry = (head, length + len(data) - held), data[len(data) - held :]
                return LineBlock(b"", self._line, ends, nexts, [])
            end, after = (int(ends[0]), int(nexts[0])) if len(ends) else (len(data), len(data))
            if not self._header:
                rejected.append(_too_long(self._line, length + end, head))
            self._line, self._skipping, self._header = self._line + 1, None, False
            data, ends, nexts = data[after:], ends[1:] - after, nexts[1:] - after
        if final and len(data) > (nexts[-1] if len(nexts) else 0):  # the last line needs no terminator
            ends, nexts = np.append(ends, len(data)), np.append(nexts, len(data))
        cut = int(nexts[-1]) if len(nexts) else 0
        block = LineBlock(data[:cut], self._line, ends, nexts, rejected)
        self._line += len(ends)
        self._carry = data[cut:]
        held = int(self._carry.endswith(b"\r"))
        if len(self._carry) - held > MAX_LINE_BYTES:
            self._skipping = (self._carry[:_KEPT_BYTES], len(self._carry) - held)
            self._carry = self._carry[len(self._carry) - held :]
        return block


def split_lines(block: LineBlock) -> tuple[pa.StringArray, np.ndarray, list[BadRow]]:
    """A block's lines as text, their line numbers, and the lines rejected before any parsing: those too long
    to be a row (only their start is kept) and those that are not UTF-8 text."""
    bounds = np.concatenate(([0], block.nexts)).astype(np.int64)
    starts, lengths = bounds[:-1], block.ends - bounds[:-1]
    numbers = block.first_line + np.arange(len(starts), dtype=np.int64)
    rejected = list(block.rejected)
    # Each value is a line with its terminator: the block's own bytes, no copy; the terminators go at the end.
    offsets = pa.py_buffer(bounds.astype(np.int32))
    values = pa.Array.from_buffers(pa.binary(), len(starts), [None, offsets, pa.py_buffer(block.text)])
    keep = lengths <= MAX_LINE_BYTES
    if not keep.all():
        rejected += [
            _too_long(int(numbers[i]), int(lengths[i]), block.text[starts[i] : starts[i] + _KEPT_BYTES])
            for i in np.flatnonzero(~keep)
        ]
        values, numbers = values.filter(pa.array(keep)), numbers[keep]
    try:
        lines = values.cast(pa.string())
    except pa.ArrowInvalid:  # some line is not UTF-8: find which (rare, so line by line)
        readable = np.ones(len(values), dtype=bool)
        for i, line in enumerate(values.to_pylist()):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                reason = f"byte 0x{line[err.start]:02x} at column {err.start + 1} is not UTF-8 text"
                rejected.append(
                    BadRow(int(numbers[i]), reason, line.decode("utf-8", "replace").rstrip("\r\n"))
                )
                readable[i] = False
        lines, numbers = values.filter(pa.array(readable)).cast(pa.string()), numbers[readable]
    return pc.utf8_rtrim(lines, characters="\r\n"), numbers, sorted(rejected, key=lambda row: row.line)


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
