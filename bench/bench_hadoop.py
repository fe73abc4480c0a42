"""Benchmarks of cluster mode (one run, prints figures; README records them). Needs the dev cluster:
``bin/hadoop-dev up`` first.

1. Per-iteration time for the same batch of images on the embedded engine, on LocalJobRunner
   (Hadoop Streaming in the client JVM, data in HDFS) and on YARN.
2. Jobs per run for N images (must equal the iterations, whatever N).
3. Bytes stored on HDFS per image (weighted points file) against the seed's text format
   (one "B.0 G.0 R.0" line per pixel).

Usage: .venv/bin/python bench/bench_hadoop.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from kmeans_ops import params as P  # noqa: E402
from kmeans_ops.driver import run_iterations  # noqa: E402
from kmeans_ops.engines import get_engine  # noqa: E402
from kmeans_ops.ingest import ingest  # noqa: E402
from kmeans_ops.samples import SAMPLES, write_samples  # noqa: E402
from kmeans_ops.workarea import WorkArea  # noqa: E402

ITERATIONS = 3


def seed_format_bytes(path: str) -> int:
    """Size of the seed's points.txt for this image: one '%.1f %.1f %.1f' line per pixel."""
    bgr = cv2.imread(path).reshape(-1, 3)
    width = np.where(bgr >= 100, 5, np.where(bgr >= 10, 4, 3))  # "226.0" "26.0" "6.0"
    return int(width.sum() + 3 * len(bgr))  # two spaces and a newline per line


def staged(names, folder, params):
    local = WorkArea(tempfile.mkdtemp(prefix="bench-"))
    for name in names:
        ingest(os.path.join(folder, name), os.path.splitext(name)[0], local, params)
    return local, [os.path.splitext(n)[0] for n in names]


def per_iteration(engine, area, ids, params) -> float:
    start = time.perf_counter()
    state = run_iterations(area, ids, engine, params)
    assert all(s["iterations"] == ITERATIONS for s in state.values())
    return (time.perf_counter() - start) / ITERATIONS


def main():
    folder = tempfile.mkdtemp(prefix="bench-photos-")
    names = [os.path.basename(p) for p in write_samples(folder)]
    params = P.validate(k=16, max_iter=ITERATIONS, delta=0)
    batch = names[:3]
    print(f"# bench_hadoop: batch of {len(batch)} photos, K=16, {ITERATIONS} iterations (no early stop)")

    local, ids = staged(batch, folder, params)
    embedded = per_iteration(get_engine("local"), local, ids, params)
    times = {"embedded": embedded}
    for framework in ("local", "yarn"):
        engine = get_engine("hadoop", framework=framework)
        area = engine.stage(staged(batch, folder, params)[0], f"bench-{framework}-{os.getpid()}")
        try:
            times[f"hadoop/{'LocalJobRunner' if framework == 'local' else 'YARN'}"] = per_iteration(engine, area, ids, params)
        finally:
            engine.discard(area)
    for name, seconds in times.items():
        print(f"per iteration, {name:24s} {seconds:7.2f} s  ({seconds / embedded:6.1f}x the embedded engine)")

    engine = get_engine("hadoop", framework="local")
    for n in (1, 3, 6):
        area = engine.stage(staged(names[:n], folder, params)[0], f"bench-jobs-{n}-{os.getpid()}")
        before = engine.jobs
        try:
            run_iterations(area, [os.path.splitext(x)[0] for x in names[:n]], engine, params)
        finally:
            engine.discard(area)
        print(f"jobs for {n} image(s), {ITERATIONS} iterations: {engine.jobs - before}")

    from bench_core import photo  # the 12-megapixel photo of bench_core (cached)

    big = photo(12)
    os.symlink(big, os.path.join(folder, "astronaut-12MP.png"))
    names.append("astronaut-12MP.png")
    local, ids = staged(names, folder, params)
    for name, image_id in zip(names, ids):
        ours = os.path.getsize(local.points(image_id)) + os.path.getsize(local.clusters(image_id, 0))
        seed = seed_format_bytes(os.path.join(folder, name))
        h, w = cv2.imread(os.path.join(folder, name)).shape[:2]
        print(f"bytes on HDFS, {name:14s} ({w}x{h}): ours {ours / 1e6:6.2f} MB ({ours / (w * h):5.2f} B/pixel), "
              f"seed text {seed / 1e6:6.2f} MB ({seed / (w * h):5.2f} B/pixel) -> {seed / ours:4.1f}x smaller")


if __name__ == "__main__":
    main()
