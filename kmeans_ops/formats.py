"""Points and clusters files: the seed's text formats and the compact weighted format.

Channel order is always OpenCV's **B G R**.

Seed formats (read and written, so runs can start from files the seed's data_prep.py wrote):
- ``points.txt``: one line per pixel, ``c1 c2 c3`` floats (``226.0 226.0 226.0``).
- ``clusters.txt``: one line per centroid, ``label c1 c2 c3`` with label 1..K.
  We write centroids with 17 significant digits, so a file round-trips exactly.

Weighted points format (the pipeline's default), one line per distinct colour::

    <image id>\\t<BBB> <GGG> <RRR> <count>

B, G, R are zero-padded to 3 digits and the pixel count to 10, so every line after the tab is
exactly 22 characters: files are written and parsed with whole-array NumPy operations, and Hadoop
Streaming splits them by lines. The image id (no whitespace) lets one job carry many images.
"""

from __future__ import annotations

import os

import numpy as np

from .colours import ColourTable, bgr_to_codes
from .errors import InputError
from .storage import write_bytes

_TAIL = 22  # len("BBB GGG RRR CCCCCCCCCC")
_DIGIT_COLUMNS = np.array([0, 1, 2, 4, 5, 6, 8, 9, 10] + list(range(12, 22)))
_SPACE_COLUMNS = np.array([3, 7, 11])
MAX_COUNT = 10**10 - 1


def check_image_id(image_id: str) -> str:
    if not image_id or any(ch.isspace() for ch in image_id):
        raise ValueError(f"image id must be non-empty with no whitespace, got {image_id!r}")
    return image_id


# ---------------------------------------------------------------- weighted points
def _digits_table(width: int) -> np.ndarray:
    """ASCII digits of 0 .. 10**width - 1, zero-padded: row v is the text of v."""
    values = np.arange(10**width)
    return (values[:, None] // 10 ** np.arange(width - 1, -1, -1) % 10 + ord("0")).astype(np.uint8)


_DIGITS3 = _digits_table(3)[:256]
_DIGITS5 = None  # built on first use (500 kB)


def format_points(image_id: str, table: ColourTable) -> bytes:
    """The weighted points lines of one image, built as one byte array by table lookups."""
    global _DIGITS5
    check_image_id(image_id)
    if len(table) and int(table.counts.max()) > MAX_COUNT:
        raise ValueError(f"a colour count exceeds {MAX_COUNT}")
    if _DIGITS5 is None:
        _DIGITS5 = _digits_table(5)
    prefix = np.frombuffer(image_id.encode("utf-8") + b"\t", np.uint8)
    codes = table.codes.astype(np.uint32)
    counts = table.counts.astype(np.int64)
    space = np.full((len(codes), 1), ord(" "), np.uint8)
    parts = [
        np.broadcast_to(prefix, (len(codes), len(prefix))),
        _DIGITS3[codes & 0xFF], space,
        _DIGITS3[(codes >> 8) & 0xFF], space,
        _DIGITS3[codes >> 16], space,
        _DIGITS5[counts // 100000], _DIGITS5[counts % 100000],
        np.full((len(codes), 1), ord("\n"), np.uint8),
    ]
    return np.concatenate(parts, axis=1).tobytes()


def write_points(path: str, image_id: str, table: ColourTable) -> None:
    write_bytes(path, format_points(image_id, table))


def parse_points(data: bytes, source: str = "<points>") -> list[tuple[str, ColourTable]]:
    """Parse weighted points lines into (image id, table) runs, in order of appearance.

    Every line is checked; the first bad one raises InputError naming ``source``, its line number
    and what was expected, never the line itself (the seed's mapper silently skipped bad lines). A
    block of one image's lines, all of the same length, is parsed as a 2-D byte array without any
    gather.
    """
    if not data:
        return []
    if not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, np.uint8)
    width = data.find(b"\n") + 1
    if width > _TAIL + 2 and len(data) % width == 0:
        rows = buf.reshape(-1, width)
        ids = rows[:, : width - _TAIL - 2]
        if (rows[:, -1] == 10).all() and (rows[:, width - _TAIL - 2] == 9).all() and (ids == ids[0]).all():
            image_id = _image_id(data, 0, width - _TAIL - 2, 0, source)
            if any(ch.isspace() for ch in image_id):
                _fail(0, source, "whitespace in image id")
            table = _parse_tails(rows[:, width - _TAIL - 1 : width - 1], source)
            return [(image_id, table)]
    return _parse_general(data, buf, source)


_POINTS_LINE = "'<image id>\\t<BBB> <GGG> <RRR> <count>' (colours 000..255, count of 10 digits >= 1)"


def _fail(line_index: int, source: str, why: str):
    """Raise the InputError of a bad weighted points line: file, line number, problem, expected form."""
    raise InputError(source, f"line {line_index + 1}: {why}; expected {_POINTS_LINE}")


def _image_id(data: bytes, start: int, stop: int, line_index: int, source: str) -> str:
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError:  # its text would quote the bytes
        _fail(line_index, source, "image id is not valid UTF-8")


def _parse_tails(tail: np.ndarray, source: str) -> ColourTable:
    """(n, 22) bytes 'BBB GGG RRR CCCCCCCCCC' -> table, every line checked."""
    digits = tail[:, _DIGIT_COLUMNS] - np.uint8(ord("0"))  # wraps below '0', so one test: > 9
    bad = (digits > 9).any(axis=1) | (tail[:, _SPACE_COLUMNS] != ord(" ")).any(axis=1)
    if bad.any():
        _fail(int(np.flatnonzero(bad)[0]), source, "malformed colour or count")
    d = digits[:, :9].astype(np.int32)
    bgr = d[:, 0::3] * 100 + d[:, 1::3] * 10 + d[:, 2::3]
    if (bgr > 255).any():
        _fail(int(np.flatnonzero((bgr > 255).any(axis=1))[0]), source, "colour value above 255")
    counts = np.zeros(len(digits), np.int64)
    for column in range(9, 19):
        counts *= 10
        counts += digits[:, column]
    if (counts < 1).any():
        _fail(int(np.flatnonzero(counts < 1)[0]), source, "count must be >= 1")
    return ColourTable(codes=bgr_to_codes(bgr), counts=counts)


def _parse_general(data: bytes, buf: np.ndarray, source: str) -> list[tuple[str, ColourTable]]:
    """Lines of any ids and lengths (a Hadoop stream of several images)."""
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    tabs = ends - _TAIL - 1
    id_len = tabs - starts
    short = np.flatnonzero(id_len < 1)
    if short.size:
        _fail(int(short[0]), source, "line too short")
    bad_tab = np.flatnonzero(buf[tabs] != ord("\t"))
    if bad_tab.size:
        _fail(int(bad_tab[0]), source, "no tab before the colour and count")
    table = _parse_tails(buf[(ends - _TAIL)[:, None] + np.arange(_TAIL)], source)

    # Group consecutive lines by image id: compare each line's id bytes with the previous line's.
    cols = np.arange(int(id_len.max()))
    ids = np.where(cols < id_len[:, None], buf[np.minimum(starts[:, None] + cols, len(buf) - 1)], 0)
    spaces = np.isin(ids, (ord(" "), ord("\t"), ord("\r"))).any(axis=1)
    if spaces.any():
        _fail(int(np.flatnonzero(spaces)[0]), source, "whitespace in image id")
    change = np.flatnonzero((ids[1:] != ids[:-1]).any(axis=1)) + 1
    bounds = np.concatenate(([0], change, [len(ends)]))
    return [
        (_image_id(data, starts[lo], tabs[lo], lo, source),
         ColourTable(codes=table.codes[lo:hi], counts=table.counts[lo:hi]))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


def read_points(path: str) -> ColourTable:
    """Read a points file of one image: weighted format, or the seed's ``points.txt`` (detected)."""
    data = _read_bytes(path, "points file")
    if not data.strip():
        raise InputError(path, "points file is empty")
    first = data[: data.find(b"\n")] if b"\n" in data else data
    if b"\t" not in first:
        return parse_seed_points(data, path)
    runs = parse_points(data, path)
    if len({image_id for image_id, _ in runs}) != 1:
        raise InputError(path, "points file holds several image ids; expected one")
    return merge_tables([table for _, table in runs])


def merge_tables(tables: list[ColourTable]) -> ColourTable:
    if len(tables) == 1:
        return tables[0]
    codes = np.concatenate([t.codes for t in tables])
    counts = np.concatenate([t.counts for t in tables])
    unique, inverse = np.unique(codes, return_inverse=True)
    return ColourTable(codes=unique.astype(np.uint32), counts=np.bincount(inverse, weights=counts).astype(np.int64))


# ---------------------------------------------------------------- seed formats
#: Lines per block when looking for the line of an error (error path only).
_BLOCK_LINES = 4096


def _read_bytes(path: str, what: str) -> bytes:
    """A file's bytes; an unreadable file is an InputError naming it (the OS error, not the name twice)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise InputError(path, f"cannot read {what} ({err.strerror or type(err).__name__})") from None


def _table_of(content: bytes | str) -> np.ndarray | None:
    """np.loadtxt of whitespace-separated numbers (``#`` comments, blank lines skipped) as a 2-D array;
    None when NumPy refuses the text. Its error is dropped on purpose: it quotes the bad token.

    ``content`` is the text (bytes) or a file's path (str): NumPy reads a path in C chunks, a file
    object line by line, so a path is about 10% faster for big files. Read as Latin-1, as NumPy
    reads a path by default, so every byte decodes (no UnicodeDecodeError). OSError propagates.
    """
    import io
    import warnings

    text = io.TextIOWrapper(io.BytesIO(content), encoding="latin-1") if isinstance(content, bytes) else content
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data"
            return np.loadtxt(text, dtype=np.float64, ndmin=2, encoding="latin-1")
    except ValueError:
        return None


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop offsets of each line (the newline included), found with NumPy."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n")) + 1
    if not len(ends) or ends[-1] != len(data):
        ends = np.append(ends, len(data))
    return np.concatenate(([0], ends[:-1])), ends


def _find_line(data: bytes, columns: int, row: int | None = None) -> int | None:
    """1-based line number of the first line NumPy cannot read as ``columns`` numbers or, with
    ``row``, of data row ``row`` (0-based, as np.loadtxt counts rows: blank and comment lines
    skipped), whichever comes first. Error path only: blocks of lines through np.loadtxt, then one
    line at a time in the block concerned, so the answer is exactly loadtxt's reading of the file."""
    starts, stops = _line_bounds(data)
    seen = 0  # data rows before the current block
    for lo in range(0, len(starts), _BLOCK_LINES):
        hi = min(lo + _BLOCK_LINES, len(starts))
        block = _table_of(data[starts[lo] : stops[hi - 1]])
        fine = block is not None and (block.size == 0 or block.shape[1] == columns)
        rows = block.shape[0] if fine and block.size else 0
        if fine and (row is None or row >= seen + rows):
            seen += rows
            continue
        for line in range(lo, hi):
            values = _table_of(data[starts[line] : stops[line]])
            if values is None or (values.size and values.shape != (1, columns)):
                return line + 1
            if values.size:
                if row == seen:
                    return line + 1
                seen += 1
    return None


def _bad_line(source: str, content: bytes | str, columns: int, row: int | None, problem: str) -> InputError:
    """The InputError of a bad line of a seed file: the file, the line number and the problem."""
    data = content if isinstance(content, bytes) else _read_bytes(content, "file")
    line = _find_line(data, columns, row)
    return InputError(source, f"line {line}: {problem}" if line else problem)


def _load_numbers(content: bytes | str, columns: int, what: str, layout: str, source: str) -> np.ndarray:
    """A seed file's content (bytes) or path (str) -> (rows, ``columns``) finite floats, parsed by
    NumPy as a whole. Any error names ``source``, the line and what was expected (``layout``),
    never what was found."""
    try:
        values = _table_of(content)
    except OSError as err:
        raise InputError(source, f"cannot read {what} ({err.strerror or type(err).__name__})") from None
    if values is None or (values.size and values.shape[1] != columns):
        raise _bad_line(source, content, columns, None, f"expected {columns} columns of numbers ({layout})")
    if values.size == 0:
        raise InputError(source, f"{what} is empty (expected lines of {columns} numbers: {layout})")
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise _bad_line(source, content, columns, row, f"expected finite numbers ({layout})")
    return values


def read_seed_points(path: str) -> ColourTable:
    """The seed's ``points.txt`` (one ``B G R`` float line per pixel) as a weighted colour table."""
    return _seed_points(os.fspath(path), path)


def parse_seed_points(data: bytes, source: str) -> ColourTable:
    """The content of a seed ``points.txt`` -> weighted colour table; errors name ``source`` and the line."""
    return _seed_points(data, source)


def _seed_points(content: bytes | str, source: str) -> ColourTable:
    values = _load_numbers(content, 3, "points file", "B G R", source)
    bad = (values < 0) | (values > 255) | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise _bad_line(source, content, 3, row, "colour values must be whole numbers in 0..255")
    codes, counts = np.unique(bgr_to_codes(values.astype(np.int64)), return_counts=True)
    return ColourTable(codes=codes.astype(np.uint32), counts=counts.astype(np.int64))


def write_seed_points(path: str, bgr_pixels: np.ndarray) -> None:
    """Write every pixel as the seed's data_prep.py did: ``226.0 226.0 226.0`` per line."""
    flat = bgr_pixels.reshape(-1, 3)
    text = "\n".join(f"{b:.1f} {g:.1f} {r:.1f}" for b, g, r in flat.astype(np.float64).tolist())
    write_bytes(path, (text + "\n").encode("ascii"))


def format_clusters(centroids: np.ndarray) -> bytes:
    """Seed clusters format with labels 1..K, floats written with 17 significant digits (exact)."""
    lines = [f"{i} {c[0]!r} {c[1]!r} {c[2]!r}" for i, c in enumerate(centroids.astype(np.float64).tolist(), start=1)]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_clusters(path: str, centroids: np.ndarray) -> None:
    write_bytes(path, format_clusters(centroids))


def read_clusters(path: str) -> np.ndarray:
    """Read a seed-format clusters file (``label c1 c2 c3``, labels 1..K in any order) -> (K, 3) B, G, R."""
    return parse_clusters(_read_bytes(path, "clusters file"), path)


def parse_clusters(data: bytes, source: str) -> np.ndarray:
    """The content of a clusters file -> (K, 3) centroids; errors name ``source`` and the line."""
    values = _load_numbers(data, 4, "clusters file", "label B G R", source)
    labels = values[:, 0]
    k = len(values)
    if not np.array_equal(np.sort(labels), np.arange(1, k + 1)):
        row = _first_bad_label(labels)
        raise _bad_line(source, data, 4, row, f"cluster labels must be 1..{k} (one per line), each once")
    out = ((values[:, 1:] < 0) | (values[:, 1:] > 255)).any(axis=1)
    if out.any():
        raise _bad_line(source, data, 4, int(np.flatnonzero(out)[0]), "centroid values must lie in 0..255")
    return values[np.argsort(labels), 1:]


def _first_bad_label(labels: np.ndarray) -> int:
    """Row of the first label that is not a whole number in 1..K, or that repeats an earlier one."""
    k = len(labels)
    bad = (labels < 1) | (labels > k) | (labels != np.round(labels))
    _, first = np.unique(labels, return_index=True)
    repeated = np.ones(k, bool)
    repeated[first] = False
    return int(np.flatnonzero(bad | repeated)[0])
