"""Benchmark of dithering (and label maps) in reconstruction (one run, prints figures; README records them).

On the 12-megapixel photo of bench_core.py (astronaut upscaled bicubically to 4000x3000), K=16,
centroids after 5 iterations of the embedded engine, the image and its colour table held in memory
(as the CLI holds them):

1. reconstruction (``reconstruct.finish``: labels, output PNG, JSON figures) without dithering, with
   Floyd-Steinberg dithering, and with dithering plus the label map; best of several runs each,
   alternated; the cost of dithering per megapixel and as a ratio of the plain reconstruction.
   Target: dithering adds at most about a second for 12 MP.
2. The steps alone: labelling every pixel through the lookup table (no dithering) against Pillow's
   Floyd-Steinberg, and the exact pixel-wise squared error a dithered output needs.

Usage: .venv/bin/python bench/bench_dither.py
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from bench_core import photo  # noqa: E402
from kmeans_ops import params as P  # noqa: E402
from kmeans_ops.driver import run_iterations  # noqa: E402
from kmeans_ops.engines import get_engine  # noqa: E402
from kmeans_ops.ingest import ingest  # noqa: E402
from kmeans_ops.reconstruct import (dithered_labels, finish, label_image, label_table, palette_of,  # noqa: E402
                                    squared_error_of)
from kmeans_ops.workarea import WorkArea  # noqa: E402

K = 16
ITERATIONS = 5
REPEATS = 3
OPTIONS = {"plain": {}, "dithered": {"dither": "floyd-steinberg"},
           "dithered + labels": {"dither": "floyd-steinberg", "labels": True}}


def best(seconds: list[float]) -> float:
    return min(seconds)


def main():
    logging.basicConfig(level=logging.WARNING)
    print(f"# bench_dither on {os.cpu_count()} cores")
    path = photo(12)
    with tempfile.TemporaryDirectory() as tmp:
        area = WorkArea(os.path.join(tmp, "work"))
        params = P.validate(k=K, max_iter=ITERATIONS, delta=0)
        meta, image, table = ingest(path, "photo", area, params, keep=True)
        megapixels = meta["pixels"] / 1e6
        print(f"12 MP photo {meta['width']}x{meta['height']} ({megapixels:.1f} MP), {meta['distinct_colours']} "
              f"distinct colours, K={K}")
        run = run_iterations(area, ["photo"], get_engine("local"), params)["photo"]

        # -- 1. the whole reconstruction, each option, alternated
        times = {name: [] for name in OPTIONS}
        results = {}
        for _ in range(REPEATS):
            for name, options in OPTIONS.items():
                out = os.path.join(tmp, name.replace(" ", ""))
                started = time.perf_counter()
                results[name] = finish(area, "photo", run, os.path.join(out, "photo.png"),
                                       os.path.join(out, "photo.json"), image=image, table=table, **options)
                times[name].append(time.perf_counter() - started)
        plain = best(times["plain"])
        print(f"reconstruction (labels, PNG written, JSON), best of {REPEATS}:")
        for name in OPTIONS:
            seconds = best(times[name])
            added = seconds - plain
            size = os.path.getsize(os.path.join(tmp, name.replace(" ", ""), "photo.png")) / 1e6
            line = f"  {name:18s} {seconds:6.2f} s  PNG {size:5.1f} MB  PSNR {results[name]['psnr']:.2f} dB"
            if name != "plain":
                line += (f"  -> +{added:.2f} s ({added / megapixels * 1e3:.0f} ms per MP), "
                         f"{seconds / plain:.2f}x the plain reconstruction")
            print(line)

        # -- 2. the steps alone
        centroids = np.array(results["plain"]["centroids_rgb"])[:, ::-1]
        palette = palette_of(centroids)
        labels = label_table(table, centroids)
        lut_t, fs_t, se_t = [], [], []
        for _ in range(REPEATS):
            started = time.perf_counter()
            label_image(image, table, labels, K)
            lut_t.append(time.perf_counter() - started)
            started = time.perf_counter()
            pixels = dithered_labels(image.bgr, palette)
            fs_t.append(time.perf_counter() - started)
            started = time.perf_counter()
            squared_error_of(image.bgr, np.take(palette, pixels, axis=0))
            se_t.append(time.perf_counter() - started)
        print(f"steps, best of {REPEATS}: labels through the lookup table {best(lut_t) * 1e3:.0f} ms; Pillow "
              f"Floyd-Steinberg {best(fs_t) * 1e3:.0f} ms ({best(fs_t) / megapixels * 1e3:.0f} ms per MP); "
              f"exact squared error of the dithered pixels {best(se_t) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
