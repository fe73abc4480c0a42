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

import numpy as np

from .colours import ColourTable, bgr_to_codes, codes_to_bgr
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

    Every line is checked; the first bad one raises InputError naming ``source`` and its line number
    (the seed's mapper silently skipped bad lines). A block of one image's lines, all of the same
    length, is parsed as a 2-D byte array without any gather.
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
            image_id = data[: width - _TAIL - 2].decode("utf-8")
            if any(ch.isspace() for ch in image_id):
                _fail(data, np.array([0]), np.array([width - 1]), 0, source, "whitespace in image id")
            ends = np.arange(width - 1, len(data), width)
            starts = ends - (width - 1)
            table = _parse_tails(rows[:, width - _TAIL - 1 : width - 1], data, starts, ends, source)
            return [(image_id, table)]
    return _parse_general(data, buf, source)


def _fail(data, starts, ends, line_index, source, why):
    text = data[starts[line_index] : ends[line_index]][:80].decode("utf-8", "replace")
    raise InputError(
        source, f"line {line_index + 1}: {why}; expected '<image id>\\t<BBB> <GGG> <RRR> <count>', got {text!r}"
    )


def _parse_tails(tail: np.ndarray, data, starts, ends, source) -> ColourTable:
    """(n, 22) bytes 'BBB GGG RRR CCCCCCCCCC' -> table, every line checked."""
    digits = tail[:, _DIGIT_COLUMNS] - np.uint8(ord("0"))  # wraps below '0', so one test: > 9
    bad = (digits > 9).any(axis=1) | (tail[:, _SPACE_COLUMNS] != ord(" ")).any(axis=1)
    if bad.any():
        _fail(data, starts, ends, int(np.flatnonzero(bad)[0]), source, "malformed colour or count")
    d = digits[:, :9].astype(np.int32)
    bgr = d[:, 0::3] * 100 + d[:, 1::3] * 10 + d[:, 2::3]
    if (bgr > 255).any():
        _fail(data, starts, ends, int(np.flatnonzero((bgr > 255).any(axis=1))[0]), source, "colour value above 255")
    counts = np.zeros(len(digits), np.int64)
    for column in range(9, 19):
        counts *= 10
        counts += digits[:, column]
    if (counts < 1).any():
        _fail(data, starts, ends, int(np.flatnonzero(counts < 1)[0]), source, "count must be >= 1")
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
        _fail(data, starts, ends, int(short[0]), source, "line too short")
    bad_tab = np.flatnonzero(buf[tabs] != ord("\t"))
    if bad_tab.size:
        _fail(data, starts, ends, int(bad_tab[0]), source, "no tab before the colour and count")
    table = _parse_tails(buf[(ends - _TAIL)[:, None] + np.arange(_TAIL)], data, starts, ends, source)

    # Group consecutive lines by image id: compare each line's id bytes with the previous line's.
    cols = np.arange(int(id_len.max()))
    ids = np.where(cols < id_len[:, None], buf[np.minimum(starts[:, None] + cols, len(buf) - 1)], 0)
    spaces = np.isin(ids, (ord(" "), ord("\t"), ord("\r"))).any(axis=1)
    if spaces.any():
        _fail(data, starts, ends, int(np.flatnonzero(spaces)[0]), source, "whitespace in image id")
    change = np.flatnonzero((ids[1:] != ids[:-1]).any(axis=1)) + 1
    bounds = np.concatenate(([0], change, [len(ends)]))
    return [
        (data[starts[lo] : tabs[lo]].decode("utf-8"), ColourTable(codes=table.codes[lo:hi], counts=table.counts[lo:hi]))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


def read_points(path: str) -> ColourTable:
    """Read a points file of one image: weighted format, or the seed's ``points.txt`` (detected)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.strip():
        raise InputError(path, "points file is empty")
    first = data[: data.find(b"\n")] if b"\n" in data else data
    if b"\t" not in first:
        return read_seed_points(path)
    runs = parse_points(data, path)
    ids = {image_id for image_id, _ in runs}
    if len(ids) != 1:
        raise InputError(path, f"points file holds {len(ids)} image ids; expected one")
    return merge_tables([table for _, table in runs])


def merge_tables(tables: list[ColourTable]) -> ColourTable:
    if len(tables) == 1:
        return tables[0]
    codes = np.concatenate([t.codes for t in tables])
    counts = np.concatenate([t.counts for t in tables])
    unique, inverse = np.unique(codes, return_inverse=True)
    return ColourTable(codes=unique.astype(np.uint32), counts=np.bincount(inverse, weights=counts).astype(np.int64))


# ---------------------------------------------------------------- seed formats
def _load_numbers(path, what: str, source: str | None = None) -> np.ndarray:
    """Whitespace-separated numbers from a path or a file object; errors name ``source`` (or path)."""
    source = source or path
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except OSError as err:
        raise InputError(source, f"cannot read {what} ({err})") from None
    except ValueError as err:
        raise InputError(source, f"not a valid {what}: {err}") from None
    if values.size == 0:
        raise InputError(source, f"{what} is empty")
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise InputError(source, f"row {row + 1}: non-finite value in {what}")
    return values


def read_seed_points(path: str) -> ColourTable:
    """The seed's ``points.txt`` (one ``B G R`` float line per pixel) as a weighted colour table."""
    values = _load_numbers(path, "points file")
    if values.shape[1] != 3:
        raise InputError(path, f"points file must have 3 columns (B G R), found {values.shape[1]}")
    bad = (values < 0) | (values > 255) | (values != np.round(values))
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InputError(path, f"row {row + 1}: colour values must be whole numbers in 0..255, got {values[row].tolist()}")
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
    with open(path, "rb") as handle:
        return parse_clusters(handle.read(), path)


def parse_clusters(data: bytes, source: str) -> np.ndarray:
    """The content of a clusters file -> (K, 3) centroids; errors name ``source``."""
    import io

    values = _load_numbers(io.BytesIO(data), "clusters file", source)
    if values.shape[1] != 4:
        raise InputError(source, f"clusters file must have 4 columns (label B G R), found {values.shape[1]}")
    labels = values[:, 0]
    k = len(values)
    if not np.array_equal(np.sort(labels), np.arange(1, k + 1)):
        raise InputError(source, f"cluster labels must be 1..{k}, each once; got {sorted(labels.tolist())[:10]}")
    centroids = values[np.argsort(labels), 1:]
    if (centroids < 0).any() or (centroids > 255).any():
        raise InputError(source, "centroid values must lie in 0..255")
    return centroids
