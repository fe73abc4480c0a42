"""Benchmarks of the kmeans_ops core (one run, prints ratios; README records the figures).

1. Start-up: ``python -m kmeans_ops quantize --help`` as a fresh process (best of 5).
2. End to end on a 12-megapixel photo, K=16, each side a fresh process, best of 2:
   a. with each tool's default initialisation (k-means++ on both sides, each its own stopping
      rule): our CLI against OpenCV + scikit-learn's KMeans(lloyd) on all pixels. Target >= 10x.
   b. 20 iterations from the same initial centroids, no early stop. Target >= 5x.
3. Kernel: seconds per iteration on the same weighted colour table from the same initial
   centroids, as the difference between a 41-iteration and a 1-iteration run (so set-up costs
   cancel), best of 3: scikit-learn's lloyd (``sample_weight`` = the counts) against our map +
   reduce as the embedded engine runs it (Hamerly bounds, compiled loops), the same in NumPy, and
   the full map of every colour (the kernel before the bounds); and the share of colours whose K
   distances were computed per iteration. Target: <= 0.5x scikit-learn's time.
4. Peak memory (max RSS) of the CLI on a 50-megapixel image. Target < 700 MB.

Usage: .venv/bin/python bench/bench_core.py [start-up] [end-to-end] [kernel] [memory]  (default: all)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kmeans_ops import hamerly, mapreduce  # noqa: E402
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


def end_to_end(ours: list[str], reference: list[str], runs: int = 2) -> tuple[float, float, str]:
    """Best of ``runs`` each, alternating, both as fresh processes (imports included)."""
    ours_t, ref_t, n_ref = [], [], ""
    for _ in range(runs):
        seconds, out = timed(reference)
        ref_t.append(seconds)
        n_ref = out.strip()
        ours_t.append(timed(ours)[0])
    return min(ref_t), min(ours_t), n_ref


def per_iteration(run, long: int = 41, repeats: int = 3) -> float:
    """Seconds per iteration of ``run(iterations)``: (time of ``long`` - time of 1) / (long - 1)."""
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(1)
        t1 = time.perf_counter()
        run(long)
        best.append((time.perf_counter() - t1 - (t1 - t0)) / (long - 1))
    return min(best)


def main(parts: list[str]):
    from sklearn.cluster import KMeans

    parts = parts or ["start-up", "end-to-end", "kernel", "memory"]
    print(f"# bench_core on {os.cpu_count()} cores; compiled loops: {'Numba' if hamerly.COMPILED else 'none'}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if "start-up" in parts:
        help_t = min(timed([sys.executable, "-m", "kmeans_ops", "quantize", "--help"])[0] for _ in range(5))
        print(f"start-up: python -m kmeans_ops quantize --help: {help_t * 1e3:.0f} ms (fresh process, best of 5)")
    path12 = photo(12)
    bgr = cv2.imread(path12)
    table = colour_table(bgr)
    start = initial_centroids(table, 16, "kmeans++", seed=0)
    print(f"12 MP photo {bgr.shape[1]}x{bgr.shape[0]}: {len(table)} distinct colours")
    if "end-to-end" in parts:
        end_to_end_figures(path12, start)
    if "kernel" in parts:
        kernel_figures(table, start, KMeans)
    if "memory" in parts:
        memory_figure()


def end_to_end_figures(path12: str, start: np.ndarray) -> None:
    """2. end to end on the 12 MP photo: with each tool's defaults, then from the same start."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        result = os.path.join(out, os.path.basename(path12)[:-4] + ".json")
        # -- 2a. end to end, each tool's defaults
        ours = [sys.executable, "-m", "kmeans_ops", "quantize", path12, "-k", "16", "--out", out, "-q"]
        reference = [sys.executable, os.path.join(ROOT, "bench", "reference_sklearn.py"), path12, "k-means++:16",
                     os.path.join(tmp, "ref.png"), "default"]
        ref, mine, n_ref = end_to_end(ours, reference)
        n_ours = json.load(open(result))["iterations"]
        print(f"end to end, K=16, default init (k-means++) and stopping rule on both sides, {n_ours} iterations "
              f"(reference {n_ref}): reference {ref:.2f}s, ours {mine:.2f}s -> {ref / mine:.1f}x faster (target >= 10x)")
        # -- 2b. end to end, same start, 20 iterations
        clusters = os.path.join(tmp, "clusters.txt")
        write_clusters(clusters, start)
        ours = [sys.executable, "-m", "kmeans_ops", "quantize", path12, "--init", clusters, "--max-iter", "20",
                "--delta", "0", "--out", out, "-q"]
        reference = [sys.executable, os.path.join(ROOT, "bench", "reference_sklearn.py"), path12, clusters,
                     os.path.join(tmp, "ref.png"), "20"]
        ref, mine, n_ref = end_to_end(ours, reference)
        n_ours = json.load(open(result))["iterations"]
        print(f"end to end, K=16, same initial centroids, {n_ours} iterations (reference {n_ref}): reference "
              f"{ref:.2f}s, ours {mine:.2f}s -> {ref / mine:.1f}x faster (target >= 5x)")


def kernel_figures(table, start: np.ndarray, KMeans) -> None:
    """3. kernel, per iteration, same weighted table."""
    colours, weights = table.bgr(), table.counts.astype(np.float64)
    data = mapreduce.block(colours, weights, table.codes, table.mean())
    shares = []

    def sklearn_run(n):
        KMeans(16, init=start, n_init=1, max_iter=n, tol=0.0, algorithm="lloyd").fit(colours, sample_weight=weights)

    def bounded_run(compiled):
        def run(n):
            state, part = hamerly.start(data, start)
            centroids = mapreduce.reduce_image(part, start, 0.0).centroids
            for _ in range(n - 1):
                part = hamerly.step(data, state, centroids, compiled=compiled)
                centroids = mapreduce.reduce_image(part, centroids, 0.0).centroids
                if compiled == hamerly.COMPILED and n > 1:
                    shares.append((state.recomputed / len(state), state.tightened / len(state)))
        return run

    def full_run(n):
        centroids = start
        for _ in range(n):
            centroids = mapreduce.reduce_image(mapreduce.map_table(data, centroids), centroids, 0.0).centroids

    if hamerly.COMPILED:
        bounded_run(True)(3)  # load the compiled loops (Numba's cache) before timing
    reference = per_iteration(sklearn_run)
    figures = [("bounds, compiled loops (the embedded engine)", per_iteration(bounded_run(True)))] if hamerly.COMPILED else []
    figures += [("bounds, NumPy", per_iteration(bounded_run(False))), ("full map of every colour", per_iteration(full_run))]
    print(f"kernel, one iteration on {len(table)} weighted colours, K=16 (41 - 1 iterations): scikit-learn lloyd "
          f"{reference * 1e3:.2f} ms")
    for what, seconds in figures:
        print(f"  ours, {what}: {seconds * 1e3:.2f} ms -> {seconds / reference:.2f}x scikit-learn's time "
              f"(target <= 0.5x)")
    run_shares = np.array(shares[-40:])
    print(f"  colours recomputed (all K distances) per iteration, iterations 2-41: mean {run_shares[:, 0].mean():.1%}, "
          f"last 20 {run_shares[-20:, 0].mean():.1%}; own distance only: mean {run_shares[:, 1].mean():.1%}")



def memory_figure() -> None:
    """4. peak memory on 50 MP."""
    path50 = photo(50)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "kmeans_ops", "quantize", path50, "-k", "16", "--max-iter", "5",
                                  "--out", tmp, "-q"], cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak (RUSAGE_CHILDREN: the largest of all)
        child.returncode = os.waitstatus_to_exitcode(status)
        assert child.returncode == 0, child.returncode
        h, w = cv2.imread(path50, cv2.IMREAD_REDUCED_COLOR_8).shape[:2]
        print(f"50 MP photo (~{w * 8}x{h * 8}), K=16, 5 iterations: {time.perf_counter() - t0:.1f}s, peak RSS "
              f"{usage.ru_maxrss / 1024:.0f} MB (target < 700 MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
