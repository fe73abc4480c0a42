"""Benchmarks of the kmeans_ops core (one run, prints ratios; README records the figures).

1. End to end on a 12-megapixel photo, K=16, 20 iterations from the same initial centroids with no
   early stop: our CLI (read, colour table, points file, iterations, reconstruction, PNG write)
   against scikit-learn's KMeans(lloyd) on all pixels with OpenCV read/write. Target >= 5x.
2. One iteration of our map/combine/reduce against one iteration of scikit-learn's lloyd on the
   same weighted colour table (best of several). Target: at most 2x slower.
3. Peak memory (max RSS) of the CLI on a 50-megapixel image. Target < 1.5 GB.

Usage: .venv/bin/python bench/bench_core.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kmeans_ops import mapreduce  # noqa: E402
from kmeans_ops.colours import colour_table  # noqa: E402
from kmeans_ops.formats import write_clusters  # noqa: E402
from kmeans_ops.initialise import initial_centroids  # noqa: E402
from kmeans_ops.samples import load_rgb  # noqa: E402

CACHE = os.path.join(ROOT, ".cache", "bench")


def photo(megapixels: float) -> str:
    """The astronaut photo resized (bicubic) to about ``megapixels`` MP, as a PNG (cached)."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    path = os.path.join(CACHE, f"astronaut-{width}x{height}.png")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        rgb = load_rgb("astronaut.png")
        big = cv2.resize(rgb[..., ::-1], (width, height), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(path, big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return path


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def end_to_end(path: str, clusters: str, tmp: str, iterations: int) -> tuple[float, float, int]:
    """Best of two runs each, alternating, both as fresh processes (imports included)."""
    ours = [sys.executable, "-m", "kmeans_ops", "quantize", path, "--init", clusters, "--max-iter", str(iterations),
            "--delta", "0", "--out", os.path.join(tmp, "out"), "-q"]
    reference = [sys.executable, os.path.join(ROOT, "bench", "reference_sklearn.py"), path, clusters,
                 os.path.join(tmp, "ref.png"), str(iterations)]
    ours_t, ref_t, n_ref = [], [], 0
    for _ in range(2):
        seconds, out = timed(reference)
        ref_t.append(seconds)
        n_ref = int(out.strip())
        ours_t.append(timed(ours)[0])
    return min(ref_t), min(ours_t), n_ref


def main():
    from sklearn.cluster import KMeans

    print(f"# bench_core on {os.cpu_count()} cores")
    path12 = photo(12)
    bgr = cv2.imread(path12)
    table = colour_table(bgr)
    start = initial_centroids(table, 16, "kmeans++", seed=0)
    print(f"12 MP photo {bgr.shape[1]}x{bgr.shape[0]}: {len(table)} distinct colours")
    with tempfile.TemporaryDirectory() as tmp:
        clusters = os.path.join(tmp, "clusters.txt")
        write_clusters(clusters, start)
        # -- 1. end to end
        ref, ours, n_ref = end_to_end(path12, clusters, tmp, 20)
        import json

        n_ours = json.load(open(os.path.join(tmp, "out", os.path.basename(path12)[:-4] + ".json")))["iterations"]
        print(f"end to end, K=16, {n_ours} iterations (reference {n_ref}): reference {ref:.2f}s, ours {ours:.2f}s "
              f"(each a fresh process, best of 2) -> {ref / ours:.1f}x faster (target >= 5x)")

    # -- 2. kernel, per iteration, same weighted table
    colours, weights = table.bgr(), table.counts.astype(np.float64)
    data = mapreduce.block(colours, weights, table.codes, table.mean())
    ours_times, ref_times = [], []
    for _ in range(3):  # 20 iterations each, so sklearn's set-up (validation, centring) is amortised
        t0 = time.perf_counter()
        centroids = start
        for _ in range(20):
            centroids = mapreduce.reduce_image(mapreduce.map_table(data, centroids), centroids, 0.0).centroids
        ours_times.append((time.perf_counter() - t0) / 20)
        t0 = time.perf_counter()
        KMeans(16, init=start, n_init=1, max_iter=20, tol=0.0, algorithm="lloyd").fit(colours, sample_weight=weights)
        ref_times.append((time.perf_counter() - t0) / 20)
    o, r = min(ours_times), min(ref_times)
    print(f"kernel, one iteration on {len(table)} weighted colours: scikit-learn lloyd {r * 1e3:.1f} ms, "
          f"ours {o * 1e3:.1f} ms -> {o / r:.2f}x sklearn's time (target <= 2x)")

    # -- 3. peak memory on 50 MP
    path50 = photo(50)
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kmeans_ops", "quantize", path50, "-k", "16", "--max-iter", "5",
                        "--out", tmp, "-q"], check=True, cwd=ROOT)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        h, w = cv2.imread(path50, cv2.IMREAD_REDUCED_COLOR_8).shape[:2]
        print(f"50 MP photo (~{w * 8}x{h * 8}), K=16, 5 iterations: {time.perf_counter() - t0:.1f}s, peak RSS "
              f"{max(peak, before) / 1024:.0f} MB (target < 1536 MB)")


if __name__ == "__main__":
    main()
