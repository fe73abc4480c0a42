"""The cost of orchestration: the DAG kmeans_image_clustering against the CLI on the same images.

1. `airflow dags test` (one process, no scheduler) on a folder of N small images (default 1100
   crops of the sample photos), against `python -m kmeans_ops quantize` on the same folder: seconds
   per image and the ratio. The DAG runs with Airflow's stock `[core] max_map_length` (1024).
2. Task instances of that run (how many tasks the scheduler would have to schedule).

Usage: .venv/bin/python bench/bench_dag.py [N]
The real-scheduler figure (standalone, REST API trigger -> success) is bench/bench_scheduler.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PY = sys.executable
K = 8


def small_images(folder: str, n: int) -> None:
    """n distinct 48x48 crops of the sample photos, as PNG."""
    import cv2

    from kmeans_ops.samples import write_samples

    with tempfile.TemporaryDirectory() as tmp:
        photos = [cv2.imread(p) for p in write_samples(tmp)]
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = (i * 37) % (photo.shape[0] - 48), (i * 53) % (photo.shape[1] - 48)
        cv2.imwrite(os.path.join(folder, f"img-{i:05d}.png"), photo[y : y + 48, x : x + 48])


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{command[:4]} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - started


def main(n: int) -> None:
    work = tempfile.mkdtemp(prefix="bench-dag-")
    images = os.path.join(work, "images")
    small_images(images, n)
    home = os.path.join(work, "airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS": json.dumps([work]),
           "AIRFLOW__CORE__MAX_MAP_LENGTH": "1024"}
    cli = timed([PY, "-m", "kmeans_ops", "quantize", images, "-k", str(K), "--out", os.path.join(work, "cli"), "-q"], env)
    conf = json.dumps({"input": [images], "k": K, "output": os.path.join(work, "dag")})
    subprocess.run([os.path.join(ROOT, "bin", "airflow"), "db", "migrate"], env=env, capture_output=True)
    dag = timed([os.path.join(ROOT, "bin", "airflow"), "dags", "test", "kmeans_image_clustering", "-c", conf], env)
    import sqlite3

    with sqlite3.connect(os.path.join(home, "airflow.db")) as db:
        tasks = db.execute("select count(*), sum(state = 'success') from task_instance").fetchone()
    published = len([f for f in os.listdir(os.path.join(work, "dag", "latest")) if f.endswith(".png")])
    print(f"{n} images, K={K}")
    print(f"  CLI:             {cli:7.1f} s  ({1000 * cli / n:.1f} ms per image)")
    print(f"  DAG (dags test): {dag:7.1f} s  ({1000 * dag / n:.1f} ms per image), {published} images published")
    print(f"  ratio DAG / CLI: {dag / cli:.1f}x")
    print(f"  task instances: {tasks[0]} ({tasks[1]} ran)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1100)
