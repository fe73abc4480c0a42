"""Cluster mode where the data lives (issue 13), on the dev cluster: ``bin/hadoop-dev up`` first.

1. Seconds per YARN iteration for a batch of 3 photos in HDFS (the sample photos upscaled to
   about 3 MB of PNG each, about 9 MB in all as in the issue; ``--scale 1`` for the samples as
   shipped, 1.3 MB), through the CLI, as the issue
   measures it: (a run of 4 iterations - a run of 1) / 3, each CLI run a fresh process into an
   ``hdfs://`` output; with one client JVM kept for the run (the default) and with a client JVM per
   job (``KMEANS_HADOOP_KEEP_CLIENT=false``), in the same script.
2. Bytes the submitting process read (files and sockets: bench/measure_reads.py) for those 3
   photos against the same command on one 8x8 image (after a warm-up run), as a share of the
   images' bytes.

Usage: .venv/bin/python bench/bench_cluster.py [--repeat N] [--clients one] [--scale F]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kmeans_ops.hdfs import Hdfs  # noqa: E402
from kmeans_ops.samples import write_samples  # noqa: E402
from measure_reads import run_cli  # noqa: E402  (bench/, the script's folder)

PHOTOS = ("astronaut.png", "coffee.png", "rocket.png")
def cli(inputs: str, out: str, iterations: int, env: dict):
    """(wall seconds, what it read: measure_reads.Reads) of one CLI run in a fresh process."""
    start = time.perf_counter()
    status, err, read = run_cli("quantize", inputs, "-k", "16", "--engine", "hadoop", "--max-iter", iterations,
                                "--delta", "0", "-q", "--out", out, env=env)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"the CLI failed ({status}):\n{err[-3000:]}")
    return seconds, read


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement (the best is kept)")
    parser.add_argument("--clients", choices=("both", "one"), default="both",
                        help="'one': only the default (one client JVM per run)")
    parser.add_argument("--scale", type=float, default=3.1, help="upscale factor of the photos (bicubic)")
    args = parser.parse_args()
    hdfs = Hdfs()
    base = f"/tmp/bench-cluster-{uuid.uuid4().hex[:8]}"
    uri = f"hdfs://127.0.0.1:8020{base}"
    folder = tempfile.mkdtemp(prefix="bench-cluster-")
    write_samples(folder)
    import cv2

    for name in PHOTOS:
        if args.scale != 1:
            path = os.path.join(folder, name)
            image = cv2.imread(path)
            cv2.imwrite(path, cv2.resize(image, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_CUBIC))
    for name in PHOTOS:
        hdfs.write_bytes(f"{base}/in/{name}", open(os.path.join(folder, name), "rb").read())

    hdfs.write_bytes(f"{base}/tiny/tiny.png", cv2.imencode(".png", cv2.imread(os.path.join(folder, PHOTOS[0]))[:8, :8])[1].tobytes())
    image_bytes = sum(os.path.getsize(os.path.join(folder, n)) for n in PHOTOS)
    print(f"# bench_cluster: {len(PHOTOS)} photos ({image_bytes / 1e6:.2f} MB) in HDFS, K=16, output on HDFS")
    try:
        rows = {}
        setups = (("one client JVM per run", {}), ("a client JVM per job", {"KMEANS_HADOOP_KEEP_CLIENT": "false"}))
        for label, env in setups[:1] if args.clients == "one" else setups:
            best = {}
            for iterations in (1, 4):
                runs = [cli(f"{uri}/in", f"{uri}/out-{uuid.uuid4().hex[:6]}", iterations, env)[0]
                        for _ in range(args.repeat)]
                best[iterations] = min(runs)
            rows[label] = (best[4] - best[1]) / 3
            print(f"{label:24s}: 1 iteration {best[1]:6.1f} s, 4 iterations {best[4]:6.1f} s "
                  f"-> {rows[label]:5.2f} s per iteration")
        cli(f"{uri}/tiny", f"{uri}/out-warm-up", 2, {})  # a just-started cluster's first jobs read more
        _, many = cli(f"{uri}/in", f"{uri}/out-rchar", 2, {})
        _, tiny = cli(f"{uri}/tiny", f"{uri}/out-tiny", 2, {})
        extra = many.data - tiny.data
        print(f"submitter read {extra / 1e3:.1f} KB more from files and HDFS for the photos than for one 8x8 "
              f"image: {100 * extra / image_bytes:.1f}% of the images' bytes (ResourceManager reports polled: "
              f"{many.control / 1e3:.0f} KB and {tiny.control / 1e3:.0f} KB)")
    finally:
        hdfs.delete(base)


if __name__ == "__main__":
    main()
