"""Hadoop Streaming mapper, combiner and reducer: thin text adapters over kmeans_ops.mapreduce.

    python -m kmeans_ops.streaming map      CENTROIDS   (stdin: weighted points lines)
    python -m kmeans_ops.streaming combine  CENTROIDS   (stdin: partial records, sorted by image id)
    python -m kmeans_ops.streaming reduce   CENTROIDS DELTA

CENTROIDS is the job's centroids file, shipped to every task by the distributed cache
(``-files``). One line per image giving the frame of its distances, then one per centroid::

    <image id>\\tM <mean B> <mean G> <mean R>
    <image id>\\tC <cluster> <B> <G> <R>

The reducer writes, per image, its new centroids and its figures::

    <image id>\\tC <cluster> <B> <G> <R>
    <image id>\\tS <figures as JSON>

Only NumPy is needed on the cluster's nodes (no OpenCV). A malformed line fails the task with a
message naming it (the seed's mapper skipped bad lines silently).
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np

from . import mapreduce
from .formats import parse_points

BLOCK = 8 << 20  # bytes of input parsed at once by the mapper


def read_centroids(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """{image id: (K, 3) centroids}, {image id: mean colour} from a job's centroids file."""
    rows: dict[str, dict[int, list[float]]] = {}
    means: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                image_id, value = line.rstrip("\n").split("\t")
                kind, *fields = value.split(" ")
                if kind == "M":
                    means[image_id] = np.array([float(v) for v in fields[:3]])
                elif kind == "C":
                    rows.setdefault(image_id, {})[int(fields[0])] = [float(v) for v in fields[1:4]]
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except (ValueError, IndexError) as err:
                raise ValueError(f"{path} line {number}: bad centroids line {line[:100]!r} ({err})") from None
    centroids = {image_id: np.array([c[j] for j in range(len(c))]) for image_id, c in rows.items()}
    return centroids, means


def format_centroids(centroids: dict[str, np.ndarray], means: dict[str, np.ndarray]) -> str:
    lines = []
    for image_id, cs in centroids.items():
        m = means[image_id]
        lines.append(f"{image_id}\tM {m[0]!r} {m[1]!r} {m[2]!r}")
        lines += [f"{image_id}\tC {j} {c[0]!r} {c[1]!r} {c[2]!r}" for j, c in enumerate(cs.tolist())]
    return "".join(line + "\n" for line in lines)


def _input_blocks(stream):
    """Whole lines from a binary stream, about BLOCK bytes at a time."""
    rest = b""
    while True:
        chunk = stream.read(BLOCK)
        if not chunk:
            if rest:
                yield rest
            return
        chunk = rest + chunk
        cut = chunk.rfind(b"\n") + 1
        rest = chunk[cut:]
        if cut:
            yield chunk[:cut]


def run_map(centroids_path: str, stdin, stdout) -> None:
    """In-mapper combining: one Partials per image for the whole task, written at the end."""
    centroids, means = read_centroids(centroids_path)
    parts: dict[str, list[mapreduce.Partials]] = {}
    for block in _input_blocks(stdin):
        for image_id, table in parse_points(block, "map input"):
            if image_id not in centroids:
                raise ValueError(f"map input: image {image_id!r} has no centroids in {centroids_path}")
            part = mapreduce.map_colours(table.bgr(), table.counts.astype(np.float64), table.codes,
                                         centroids[image_id], means[image_id])
            parts.setdefault(image_id, []).append(part)
            if len(parts[image_id]) > 8:
                parts[image_id] = [mapreduce.combine(parts[image_id])]
    for image_id, image_parts in parts.items():
        stdout.write(mapreduce.encode(image_id, mapreduce.combine(image_parts)))


def _by_image(lines):
    return itertools.groupby((line for line in lines if line.strip()), key=lambda line: line.split("\t", 1)[0])


def run_combine(centroids_path: str, stdin, stdout) -> None:
    centroids, _ = read_centroids(centroids_path)
    for image_id, records in _by_image(stdin):
        part = mapreduce.decode(records, lambda i: len(centroids[i]))[image_id]
        stdout.write(mapreduce.encode(image_id, part))


def run_reduce(centroids_path: str, delta: float, stdin, stdout) -> None:
    centroids, _ = read_centroids(centroids_path)
    for image_id, records in _by_image(stdin):
        part = mapreduce.decode(records, lambda i: len(centroids[i]))[image_id]
        update = mapreduce.reduce_image(part, centroids[image_id], delta)
        lines = [f"{image_id}\tC {j} {c[0]!r} {c[1]!r} {c[2]!r}" for j, c in enumerate(update.centroids.tolist())]
        lines.append(f"{image_id}\tS {json.dumps(update.figures(0))}")
        stdout.write("".join(line + "\n" for line in lines))


def parse_reduce_output(lines) -> dict[str, tuple[np.ndarray, dict]]:
    """The reducers' output -> {image id: (new centroids, figures)}."""
    rows: dict[str, dict[int, list[float]]] = {}
    figures: dict[str, dict] = {}
    for line in lines:
        if not line.strip():
            continue
        image_id, value = line.rstrip("\n").split("\t", 1)
        kind, rest = value.split(" ", 1)
        if kind == "C":
            j, b, g, r = rest.split(" ")
            rows.setdefault(image_id, {})[int(j)] = [float(b), float(g), float(r)]
        elif kind == "S":
            figures[image_id] = json.loads(rest)
        else:
            raise ValueError(f"unexpected reducer output {line[:100]!r}")
    return {i: (np.array([rows[i][j] for j in range(len(rows[i]))]), figures[i]) for i in figures}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    role = argv[0] if argv else ""
    stdout = sys.stdout
    if role == "map":
        run_map(argv[1], sys.stdin.buffer, stdout)
    elif role == "combine":
        run_combine(argv[1], sys.stdin, stdout)
    elif role == "reduce":
        run_reduce(argv[1], float(argv[2]), sys.stdin, stdout)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
