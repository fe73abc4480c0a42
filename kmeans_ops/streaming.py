"""Hadoop Streaming tasks: thin text adapters over kmeans_ops.mapreduce, ingest and reconstruct.

    python -m kmeans_ops.streaming map      CENTROIDS   (stdin: weighted points lines)
    python -m kmeans_ops.streaming combine  CENTROIDS   (stdin: partial records, sorted by image id)
    python -m kmeans_ops.streaming reduce   CENTROIDS DELTA [AREA ITERATION OUTPUT]
    python -m kmeans_ops.streaming ingest      JOB      (stdin: one image per line, JSON)
    python -m kmeans_ops.streaming reconstruct JOB      (stdin: one image per line, JSON)

CENTROIDS is the job's centroids file, shipped to every task by the distributed cache
(``-files``). One line per image giving the frame of its distances, then one per centroid::

    <image id>\tM <mean B> <mean G> <mean R>
    <image id>\tC <cluster> <B> <G> <R>

The reducer's result, per image, is its new centroids and its figures::

    <image id>\tC <cluster> <B> <G> <R>
    <image id>\tS <figures as JSON>

written to stdout, or with AREA, ITERATION and OUTPUT (what the Hadoop engine passes) by the task
itself: the result to ``OUTPUT/part-<partition>`` and each image's ``clusters-ITERATION`` and
``stats-ITERATION`` into the work area AREA on HDFS (WebHDFS: settings.node_webhdfs). The job then
has no output of MapReduce's own (NullOutputFormat), which spares each task's commit handshake
(Task.commit asks the ApplicationMaster every 1000 ms whether it may commit: about 1 s per task).

``ingest`` and ``reconstruct`` run kmeans_ops.ingest.ingest_batch and
kmeans_ops.reconstruct.reconstruct_batch on the node, one image at a time, in a local temporary
folder: the image is read from HDFS there, its work files (ingest) or outputs (reconstruct) are
uploaded to HDFS, and one result line per image (``<image id>\t<JSON>``) goes to
``OUTPUT/part-<partition>``. JOB (a JSON file in the distributed cache) names the work area, the
output and the stage's options (kmeans_ops.engines.stages).

map, combine and reduce to stdout need only NumPy on the nodes; ingest, reconstruct and the reducer
writing its results need what ingest needs (NumPy, OpenCV, Pillow) and the ``hdfs`` package. A
malformed line fails the task with a message naming its line number and the expected format,
never the line (the task's stderr reaches the engine's error); the seed's mapper skipped bad lines
silently.
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np

from . import mapreduce
from .errors import shown
from .formats import parse_points

BLOCK = 8 << 20  # bytes of input parsed at once by the mapper


#: What each line of a job's centroids file and of the reducers' output holds (for messages).
CENTROIDS_LINE = "'<image id>\\tM <mean B> <mean G> <mean R> [<pinned>]' or '<image id>\\tC <cluster> <B> <G> <R>'"
REDUCER_LINE = "'<image id>\\tC <cluster> <B> <G> <R>' or '<image id>\\tS <figures as a JSON object>'"


def utf8_lines(data: bytes, source: str) -> list[str]:
    """The ``\\n``-separated lines of a job file's bytes ``data``; ValueError naming ``source`` and the
    line when they are not UTF-8 (the decoder's own message quotes the byte it found)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{shown(source)}: line {line}: not UTF-8 (expected text)") from None
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_centroids(path: str, pins: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """{image id: (K, 3) centroids}, {image id: mean colour} from a job's centroids file, and into
    ``pins`` (when given) {image id: how many first centroids are pinned} (an M line's 4th field).
    ValueError naming the file, the line and the expected format for a malformed line (never the line)."""
    rows: dict[str, dict[int, list[float]]] = {}
    means: dict[str, np.ndarray] = {}
    with open(path, "rb") as handle:
        lines = utf8_lines(handle.read(), path)
    for number, line in enumerate(lines, start=1):
        try:
            image_id, value = line.split("\t")
            kind, *fields = value.split(" ")
            if kind == "M" and len(fields) in (3, 4):
                means[image_id] = np.array([float(v) for v in fields[:3]])
                if pins is not None:
                    pins[image_id] = int(fields[3]) if len(fields) == 4 else 0
            elif kind == "C" and len(fields) == 4:
                rows.setdefault(image_id, {})[int(fields[0])] = [float(v) for v in fields[1:4]]
            else:
                raise ValueError("unknown kind")
        except ValueError:
            raise ValueError(f"{shown(path)}: line {number}: expected {CENTROIDS_LINE}") from None
    if set(rows) != set(means):
        raise ValueError(f"{shown(path)}: expected one M line and C lines for every image")
    return {image_id: _stacked(c, path) for image_id, c in rows.items()}, means


def _stacked(rows: dict[int, list[float]], source: str) -> np.ndarray:
    """An image's (K, 3) centroids from {cluster: [B, G, R]}; ValueError naming ``source`` unless
    the clusters are exactly 0..K-1."""
    if not rows or sorted(rows) != list(range(len(rows))):
        raise ValueError(f"{shown(source)}: expected one C line for each cluster 0..K-1 of every image")
    return np.array([rows[j] for j in range(len(rows))])


def format_centroids(centroids: dict[str, np.ndarray], means: dict[str, np.ndarray], pins: dict | None = None) -> str:
    """A job's centroids file; an image with pinned centroids (``pins``) has their count after its mean."""
    lines = []
    for image_id, cs in centroids.items():
        m, n = means[image_id], (pins or {}).get(image_id, 0)
        lines.append(f"{image_id}\tM {m[0]!r} {m[1]!r} {m[2]!r}" + (f" {int(n)}" if n else ""))
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
    """(image id, records, their line numbers) for each run of non-blank lines with one image id;
    line numbers count every line of ``lines``, for messages."""
    numbered = ((number, line) for number, line in enumerate(lines, start=1) if line.strip())
    for image_id, group in itertools.groupby(numbered, key=lambda item: item[1].split("\t", 1)[0]):
        numbers, records = zip(*group)
        yield image_id, records, numbers


def run_combine(centroids_path: str, stdin, stdout) -> None:
    centroids, _ = read_centroids(centroids_path)
    for image_id, records, numbers in _by_image(stdin):
        part = mapreduce.decode(records, lambda i: len(centroids[i]), numbers)[image_id]
        stdout.write(mapreduce.encode(image_id, part))


def run_reduce(centroids_path: str, delta: float, stdin, stdout) -> None:
    pins: dict[str, int] = {}
    centroids, _ = read_centroids(centroids_path, pins)
    for image_id, records, numbers in _by_image(stdin):
        part = mapreduce.decode(records, lambda i: len(centroids[i]), numbers)[image_id]
        update = mapreduce.reduce_image(part, centroids[image_id], delta, pins.get(image_id, 0))
        lines = [f"{image_id}\tC {j} {c[0]!r} {c[1]!r} {c[2]!r}" for j, c in enumerate(update.centroids.tolist())]
        lines.append(f"{image_id}\tS {json.dumps(update.figures(0))}")
        stdout.write("".join(line + "\n" for line in lines))


def parse_reduce_output(lines, source: str = "reducer output") -> dict[str, tuple[np.ndarray, dict]]:
    """The reducers' output -> {image id: (new centroids, figures)}.

    ``source`` names where ``lines`` come from (one part file: all the records of an image are in
    one). ValueError naming it, the line and the expected format for a malformed line (never the
    line), or naming it when an image's clusters are not 0..K-1.
    """
    rows: dict[str, dict[int, list[float]]] = {}
    figures: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            image_id, value = line.rstrip("\n").split("\t", 1)
            kind, rest = value.split(" ", 1)
            if kind == "C":
                j, b, g, r = rest.split(" ")
                rows.setdefault(image_id, {})[int(j)] = [float(b), float(g), float(r)]
            elif kind == "S" and isinstance(stats := json.loads(rest), dict):
                figures[image_id] = stats
            else:
                raise ValueError("unknown kind")
        except ValueError:  # json.JSONDecodeError included
            raise ValueError(f"{shown(source)}: line {number}: expected {REDUCER_LINE}") from None
    return {i: (_stacked(rows.get(i, {}), source), figures[i]) for i in figures}


def task_part_name() -> str:
    """The part file of this task: ``part-<partition>`` (streaming exports the job's settings to the
    environment, dots as underscores): two attempts of one task write the same name."""
    import os

    return f"part-{int(os.environ.get('mapreduce_task_partition', '0')):05d}"


def write_task_output(output: str, text: str) -> None:
    """This task's result file in the job's OUTPUT folder on HDFS (atomic: a temporary, renamed)."""
    import posixpath

    from .hdfs import Hdfs

    Hdfs().write_bytes(posixpath.join(output, task_part_name()), text.encode("utf-8"))


def run_reduce_to_hdfs(centroids_path: str, delta: float, area_root: str, iteration: int, output: str, stdin) -> None:
    """The reducer of the Hadoop engine: its result to OUTPUT, each image's new centroids and
    figures into the work area (formats.format_clusters, stats-NNN.json), all through WebHDFS."""
    import io

    from .formats import format_clusters
    from .hdfs import Hdfs
    from .workarea import WorkArea

    import posixpath
    import threading
    from concurrent.futures import ThreadPoolExecutor

    buffer = io.StringIO()
    run_reduce(centroids_path, delta, stdin, buffer)
    text = buffer.getvalue()
    area = WorkArea(area_root)
    files = {posixpath.join(output, task_part_name()): text.encode("utf-8")}
    for image_id, (new, stats) in parse_reduce_output(utf8_lines(text.encode("utf-8"), "reducer output")).items():
        files[area.clusters(image_id, iteration)] = format_clusters(new)
        files[area.stats(image_id, iteration)] = json.dumps({**stats, "iteration": iteration}).encode()
    # Each atomic write is four WebHDFS requests: the files go in parallel, a client per thread.
    local = threading.local()

    def write(item):
        if not hasattr(local, "hdfs"):
            local.hdfs = Hdfs()
        local.hdfs.write_bytes(*item)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, files.items()))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    role = argv[0] if argv else ""
    stdout = sys.stdout
    if role == "map":
        run_map(argv[1], sys.stdin.buffer, stdout)
    elif role == "combine":
        run_combine(argv[1], sys.stdin, stdout)
    elif role == "reduce" and len(argv) == 6:
        run_reduce_to_hdfs(argv[1], float(argv[2]), argv[3], int(argv[4]), argv[5], sys.stdin)
    elif role == "reduce":
        run_reduce(argv[1], float(argv[2]), sys.stdin, stdout)
    elif role in ("ingest", "reconstruct"):
        from .engines.stages import run_task

        write_task_output(*run_task(role, argv[1], sys.stdin))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
