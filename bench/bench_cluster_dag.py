"""A folder of many images in HDFS through the real scheduler with engine=hadoop (issue 13), on the
dev cluster (``bin/hadoop-dev up`` first): `bin/airflow standalone` (LocalExecutor, a triggerer),
the MapReduce tasks deferrable, one run of kmeans_image_clustering triggered through the REST API.

Prints: trigger-to-success seconds, seconds per image, the HDFS bytes the Airflow tasks read (each
task logs its process's count, kmeans_ops.hdfs.BYTES_READ: the worker's share of the data) against
the bytes of the images, the most tasks running at once on the worker, and the time task
instances spent deferred (in the triggerer, no worker slot).

The images: crops of the sample photos (a few KB each), so the run measures the pipeline, not
the decoding of big files.

Usage: .venv/bin/python bench/bench_cluster_dag.py [--images 500] [--k 8] [--max-iterations 5]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from bench_scheduler import request, stamp, standalone  # noqa: E402
from kmeans_ops.stagetimes import union_seconds  # noqa: E402

DAG = "kmeans_image_clustering"
READ_LINE = re.compile(r"HDFS bytes read by this task: (\d+)")


def landed(count: int, folder: str) -> tuple[str, int]:
    """``count`` small PNG crops of the sample photos in a fresh HDFS folder; (URI, their bytes)."""
    import cv2

    from kmeans_ops.hdfs import Hdfs
    from kmeans_ops.samples import write_samples

    local = tempfile.mkdtemp(prefix="bench-crops-")
    photos = [cv2.imread(p) for p in write_samples(local)]
    hdfs, total = Hdfs(), 0
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = (i * 37) % (photo.shape[0] - 48), (i * 53) % (photo.shape[1] - 48)
        data = cv2.imencode(".png", photo[y : y + 48, x : x + 48])[1].tobytes()
        hdfs.write_bytes(f"{folder}/in/img-{i:04d}.png", data)
        total += len(data)
    shutil.rmtree(local, ignore_errors=True)
    return f"hdfs://127.0.0.1:8020{folder}", total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-iterations", type=int, default=5)
    args = parser.parse_args()
    folder = f"/tmp/bench-dag-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    uri, image_bytes = landed(args.images, folder)
    print(f"# bench_cluster_dag: {args.images} images ({image_bytes / 1e6:.2f} MB) landed in HDFS in "
          f"{time.perf_counter() - started:.0f} s; K={args.k}, at most {args.max_iterations} iterations")

    work = tempfile.mkdtemp(prefix="bench-cluster-dag-")
    server, api, token = standalone(work, {"AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "true",
                                           "AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS": json.dumps([uri])})
    home = os.path.join(work, "airflow-home")
    try:
        conf = {"input": [f"{uri}/in"], "engine": "hadoop", "k": args.k, "max_iterations": args.max_iterations,
                "output": f"{uri}/out"}
        triggered = time.perf_counter()
        run = request(f"{api}/api/v2/dags/{DAG}/dagRuns", token, {"logical_date": None, "conf": conf})
        run_id = run["dag_run_id"]
        while True:
            state = request(f"{api}/api/v2/dags/{DAG}/dagRuns/{run_id}", token)["state"]
            if state in ("success", "failed"):
                break
            time.sleep(1)
        wall = time.perf_counter() - triggered
        tis = request(f"{api}/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances?limit=1000", token)["task_instances"]
        ran = [t for t in tis if t["start_date"] and t["end_date"]]
        read = sum(int(m) for path in glob.glob(os.path.join(home, "logs", "**", "*.log"), recursive=True)
                   for m in READ_LINE.findall(open(path, errors="replace").read()))
        print(f"run {state}: {wall:.0f} s from trigger to {state}, {wall / args.images:.2f} s per image")
        print(f"task instances: {len(tis)} ({len(ran)} ran); tasks running {union_seconds([(stamp(t['start_date']), stamp(t['end_date'])) for t in ran]):.0f} s")
        print(f"HDFS bytes read by the Airflow tasks: {read / 1e6:.2f} MB = {100 * read / image_bytes:.1f}% of the "
              f"images' {image_bytes / 1e6:.2f} MB")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=90)
        shutil.rmtree(work, ignore_errors=True)
        from kmeans_ops.hdfs import Hdfs

        Hdfs().delete(folder)


if __name__ == "__main__":
    main()
