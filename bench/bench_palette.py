"""One palette for a whole run (``--palette run``) against one palette per image (the reference),
on two sets: 1100 small images (48x48 crops of the sample photos, as bench_dag.py) and 8 large
photos (the sample photos upscaled bicubically to about 12 MP; the last two at another size, so
their colours differ from the first two's).

For each set and mode, K=16, no early stop (delta 0):
- ingest (colour tables and points files; per image also its k-means++ start) and, for the shared
  palette, the union of the tables with its k-means++ start (kmeans_ops.palette.merge_run);
- seconds per iteration on the embedded engine (tables kept in memory, as the CLI does), and on
  Hadoop Streaming on YARN when the dev cluster is up (``bin/hadoop-dev up``), with the jobs counted.
  Per image on YARN, the 1100 small images are 18 jobs of 64 images per iteration: one job (the
  first 64 images) is timed and the iteration's time extrapolated (18x), marked as such;
- the upload of what the engine reads to HDFS: per image, every image's folder (for the 1100 small
  images, the first 64 uploaded and the whole extrapolated); with one palette, the unit alone
  (palette.unit_area).

Usage: .venv/bin/python bench/bench_palette.py [--no-hadoop]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import cv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from kmeans_ops import palette  # noqa: E402
from kmeans_ops import params as P  # noqa: E402
from kmeans_ops.driver import run_iterations, run_palette  # noqa: E402
from kmeans_ops.engines import get_engine  # noqa: E402
from kmeans_ops.ingest import ingest  # noqa: E402
from kmeans_ops.run import batches  # noqa: E402
from kmeans_ops.samples import SAMPLES, load_rgb  # noqa: E402
from kmeans_ops.workarea import WorkArea  # noqa: E402

K = 16
ITERATIONS = 5  # embedded engine
HADOOP_ITERATIONS = 2  # YARN: 10-60 s a job
BATCH = 64  # the CLI's and the DAG's default batch_size
CACHE = os.path.join(ROOT, ".cache", "bench")
#: Work areas made by this run, removed at the end.
TEMPORARY: list[str] = []


def work_area(prefix: str) -> WorkArea:
    TEMPORARY.append(tempfile.mkdtemp(prefix=prefix))
    return WorkArea(TEMPORARY[-1])


def large_photos() -> list[str]:
    """8 sample photos upscaled to about 12 MP (cached PNGs): the six at 4000x3000, then two of
    them again at 4240x2832, whose interpolated colours differ."""
    sizes = [(4000, 3000)] * len(SAMPLES) + [(4240, 2832)] * 2
    names = list(SAMPLES) + list(SAMPLES)[:2]
    paths = []
    os.makedirs(CACHE, exist_ok=True)
    for i, (name, (width, height)) in enumerate(zip(names, sizes)):
        path = os.path.join(CACHE, f"palette-{i}-{os.path.splitext(name)[0]}-{width}x{height}.png")
        if not os.path.exists(path):
            big = cv2.resize(load_rgb(name)[..., ::-1], (width, height), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(path, big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        paths.append(path)
    return paths


def small_photos(n: int = 1100) -> list[str]:
    from bench_dag import small_images

    folder = os.path.join(CACHE, f"palette-small-{n}")
    if not os.path.isdir(folder) or len(os.listdir(folder)) != n:
        small_images(folder, n)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))


def ingested(paths: list[str], params, engine=None) -> tuple[WorkArea, list[str], float, dict]:
    """Ingest every image into a new local work area; per image mode, the embedded engine keeps
    each table (as the CLI does). Returns the area, the ids, the seconds and the tables."""
    area = work_area("bench-palette-")
    ids, tables = [], {}
    start = time.perf_counter()
    for i, path in enumerate(paths):
        image_id = f"img-{i:05d}"
        _, _, table = ingest(path, image_id, area, params, keep=True)
        if engine is not None and params.palette == "image":
            engine.remember(area, image_id, table)
        tables[image_id] = table
        ids.append(image_id)
    return area, ids, time.perf_counter() - start, tables


def per_image_iterations(engine, area, ids, params, jobs_of=None) -> tuple[float, int]:
    """Seconds per iteration for the run per image (batches of BATCH images, one job each), and
    the iterations done (images that stop moving leave their batch, as in a real run)."""
    start = time.perf_counter()
    done = 0
    for batch in (jobs_of or batches)(ids, BATCH):
        state = run_iterations(area, batch, engine, params)
        done = max(done, *(s["iterations"] for s in state.values()))
    return (time.perf_counter() - start) / done, done


def subset(area: WorkArea, ids: list[str]) -> WorkArea:
    """A new local work area holding copies of the folders of ``ids`` only."""
    part = work_area("bench-palette-part-")
    for image_id in ids:
        shutil.copytree(area.image_dir(image_id), part.image_dir(image_id))
    return part


def cluster_up() -> bool:
    return subprocess.run([os.path.join(ROOT, "bin", "hadoop-dev"), "status"], capture_output=True).returncode == 0


def bench_set(label: str, paths: list[str], hadoop: bool) -> None:
    print(f"\n## {label}: {len(paths)} images, K={K}")
    rows = {}

    # --- reference: one palette per image
    image_params = P.validate(k=K, max_iter=ITERATIONS, delta=0)
    embedded = get_engine("local")
    area, ids, ingest_s, tables = ingested(paths, image_params, embedded)
    del tables
    per_iter, done = per_image_iterations(embedded, area, ids, image_params)
    rows["per image"] = {"ingest": ingest_s, "prepare": 0.0, "embedded": per_iter, "iterations": done,
                         "jobs_per_iteration": len(batches(ids, BATCH))}
    if hadoop:
        h_params = P.validate(k=K, max_iter=HADOOP_ITERATIONS, delta=0)
        engine = get_engine("hadoop", framework="yarn")
        jobs = batches(ids, BATCH)
        staged_at = time.perf_counter()
        remote = engine.stage(subset(area, jobs[0]), f"bench-palette-image-{os.getpid()}")
        rows["per image"]["upload"] = (time.perf_counter() - staged_at) * len(ids) / len(jobs[0])
        rows["per image"]["upload_note"] = f"{len(jobs[0])} folders timed, x{len(ids) / len(jobs[0]):.1f}" \
            if len(jobs) > 1 else f"{len(ids)} folders"
        try:
            first, done = per_image_iterations(engine, remote, jobs[0], h_params)
            rows["per image"]["yarn"] = first * len(jobs)
            rows["per image"]["yarn_note"] = (f"one job of {len(jobs[0])} images timed, x{len(jobs)}"
                                              if len(jobs) > 1 else f"{engine.jobs} jobs for {done} iterations")
        finally:
            engine.discard(remote)

    # --- one palette for the run
    run_params = P.validate(k=K, max_iter=ITERATIONS, delta=0, palette="run")
    area, ids, ingest_s, tables = ingested(paths, run_params)
    start = time.perf_counter()
    unit, union = palette.merge_run(area, ids, run_params, tables, keep=True)
    merge_s = time.perf_counter() - start
    del tables
    shared = palette.unit_area(area, unit)
    embedded = get_engine("local")
    embedded.remember(shared, unit, union)
    start = time.perf_counter()
    state = run_palette(shared, unit, embedded, run_params)
    rows["one palette"] = {"ingest": ingest_s, "prepare": merge_s, "iterations": state["iterations"],
                           "embedded": (time.perf_counter() - start) / state["iterations"], "jobs_per_iteration": 1,
                           "union": len(union), "points_mb": os.path.getsize(shared.points(unit)) / 1e6}
    if hadoop:
        h_params = P.validate(k=K, max_iter=HADOOP_ITERATIONS, delta=0, palette="run")
        engine = get_engine("hadoop", framework="yarn")
        staged_at = time.perf_counter()
        remote = engine.stage(shared, f"bench-palette-run-{os.getpid()}")
        rows["one palette"]["upload"] = time.perf_counter() - staged_at
        rows["one palette"]["upload_note"] = "the unit alone"
        try:
            start = time.perf_counter()
            state = run_palette(remote, unit, engine, h_params)
            rows["one palette"]["yarn"] = (time.perf_counter() - start) / state["iterations"]
            rows["one palette"]["yarn_note"] = f"{engine.jobs} jobs for {state['iterations']} iterations"
        finally:
            engine.discard(remote)

    distinct = rows["one palette"]["union"]
    print(f"{union.n_pixels / 1e6:.1f} MP in all; union of the tables: {distinct} distinct colours, "
          f"points file {rows['one palette']['points_mb']:.1f} MB")
    print("| mode | ingest | union + k-means++ | jobs per iteration | s per iteration, embedded | upload to HDFS | "
          "s per iteration, YARN |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        yarn = f"{r['yarn']:.1f} ({r['yarn_note']})" if "yarn" in r else "-"
        upload = f"{r['upload']:.1f} s ({r['upload_note']})" if "upload" in r else "-"
        prepare = f"{r['prepare']:.2f} s" if r["prepare"] else "-"
        print(f"| {mode} | {r['ingest']:.1f} s | {prepare} | {r['jobs_per_iteration']} | "
              f"{r['embedded']:.3f} ({r['iterations']} iterations) | {upload} | {yarn} |")
    ref, run = rows["per image"], rows["one palette"]
    print(f"per iteration, one palette against per image: embedded {ref['embedded'] / run['embedded']:.1f}x faster"
          + (f", YARN {ref['yarn'] / run['yarn']:.1f}x faster" if hadoop else ""))


def main() -> None:
    hadoop = "--no-hadoop" not in sys.argv and cluster_up()
    print(f"# bench_palette: K={K}, {ITERATIONS} iterations embedded, {HADOOP_ITERATIONS} on YARN "
          f"({'dev cluster up' if hadoop else 'no Hadoop'}), no early stop (delta 0)")
    try:
        bench_set("1100 small images (48x48 crops)", small_photos(), hadoop)
        bench_set("8 large photos (about 12 MP each)", large_photos(), hadoop)
    finally:
        for folder in TEMPORARY:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
