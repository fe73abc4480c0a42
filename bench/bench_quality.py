"""``-k auto --quality MIN-MAX`` on the sample photos: the chosen K, its PSNR, the output's size
against the input file, and what the search costs against one fixed-K run at the chosen K; then
Pillow's ``Image.quantize`` on the same photos at the same K (median cut, fast octree, and
libimagequant when this Pillow has it): PSNR and seconds.

Every run is the CLI's (``python -m kmeans_ops quantize``, in process, the embedded engine), each
photo alone, the sample photos as ``samples`` writes them (china and flower JPEG, the others PNG,
and those also as JPEG of quality 90). Seconds are
wall time on this machine: compare them as ratios (search / fixed K, Pillow / ours), not as
absolute figures. Prints a Markdown table (docs/benchmarks.md quotes it).

Usage: .venv/bin/python bench/bench_quality.py [--quality 28-32] [--photos coffee.png,rocket.png]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kmeans_ops.cli import main  # noqa: E402
from kmeans_ops.reconstruct import squared_error_of  # noqa: E402
from kmeans_ops.samples import SAMPLES, write_samples  # noqa: E402


def cli(*argv) -> tuple[float, float, int]:
    """Run the CLI quietly; (wall seconds, CPU seconds of this process, exit status)."""
    started, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stderr(io.StringIO()):
        status = main(["quantize", *map(str, argv), "-q"])
    return time.perf_counter() - started, time.process_time() - cpu, status


def psnr_of(original_bgr: np.ndarray, output_bgr: np.ndarray) -> float:
    mse = squared_error_of(original_bgr, output_bgr) / original_bgr.size
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def pillow_methods() -> dict:
    from PIL import Image, features

    methods = {"median cut": Image.Quantize.MEDIANCUT, "fast octree": Image.Quantize.FASTOCTREE}
    if features.check_feature("libimagequant"):
        methods["libimagequant"] = Image.Quantize.LIBIMAGEQUANT
    return methods


def pillow(path: str, k: int, method) -> tuple[float, float]:
    """(PSNR, seconds) of Pillow's quantize at ``k`` colours, no dithering (as ours)."""
    from PIL import Image

    with Image.open(path) as source:
        rgb = source.convert("RGB")
    started = time.perf_counter()
    out = rgb.quantize(colors=k, method=method, dither=Image.Dither.NONE).convert("RGB")
    seconds = time.perf_counter() - started
    original = np.ascontiguousarray(np.asarray(rgb)[..., ::-1])
    return psnr_of(original, np.ascontiguousarray(np.asarray(out)[..., ::-1])), seconds


def main_bench() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quality", default="28-32")
    parser.add_argument("--photos", default=",".join(SAMPLES))
    args = parser.parse_args()
    names = args.photos.split(",")
    work = tempfile.mkdtemp(prefix="bench-quality-")
    try:
        pngs = write_samples(os.path.join(work, "in"), names)
        inputs = []
        for png in pngs:  # china.jpg and flower.jpg are JPEGs as shipped; each PNG also as a JPEG
            inputs.append(png)
            if png.endswith(".png"):
                inputs.append(os.path.splitext(png)[0] + ".jpg")
                cv2.imwrite(inputs[-1], cv2.imread(png), [cv2.IMWRITE_JPEG_QUALITY, 90])
        methods = pillow_methods()
        cli(inputs[0], "-k", "4", "--max-iter", "1", "--out", os.path.join(work, "warm-up"))  # load the compiled loops
        print(f"quality {args.quality}, embedded engine; Pillow: {', '.join(methods)}\n")
        print("| input | pixels | chosen K | K tried (finished) | PSNR dB | output / input | search s | fixed-K s | "
              "search / fixed, wall | search / fixed, CPU | " + " | ".join(f"{m} PSNR dB, s" for m in methods) + " |")
        print("|" + "---|" * (10 + len(methods)))
        totals = [0.0, 0.0, 0.0, 0.0]
        for path in inputs:
            name = os.path.basename(path)
            stem = os.path.splitext(name)[0]
            out = os.path.join(work, "auto", name)
            seconds, cpu, status = cli(path, "-k", "auto", "--quality", args.quality, "--out", out)
            if status != 0:
                print(f"| {name} | refused (exit {status}) |")
                continue
            with open(os.path.join(out, stem + ".json"), encoding="utf-8") as handle:
                result = json.load(handle)
            k = result["k"]
            fixed, fixed_cpu, _ = cli(path, "-k", k, "--out", os.path.join(work, "fixed", name))
            for i, value in enumerate((seconds, fixed, cpu, fixed_cpu)):
                totals[i] += value
            cells = [", ".join(f"{v:.2f}" for v in pillow(path, k, m)) for m in methods.values()]
            candidates = result["quality"]["candidates"]
            print(f"| {name} | {result['width'] * result['height']:,} | {k} | {len(candidates)} "
                  f"({sum(c['finished'] for c in candidates)}) | "
                  f"{result['psnr']:.2f} | {result['size_ratio']:.0%} | {seconds:.1f} | {fixed:.1f} | "
                  f"{seconds / fixed:.1f}x | {cpu / fixed_cpu:.1f}x | " + " | ".join(cells) + " |")
        print(f"\nall inputs: search {totals[0]:.1f} s, fixed K {totals[1]:.1f} s: {totals[0] / totals[1]:.1f}x wall; "
              f"CPU {totals[2]:.1f} s against {totals[3]:.1f} s: {totals[2] / totals[3]:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
