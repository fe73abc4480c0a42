"""Faults on the real dev cluster: a DataNode that goes away, a task container that is killed.

Each test restores the cluster (DataNode started again) before it ends.
"""

import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time

import cv2
import numpy as np
import pytest

from conftest import ROOT, photo_bgr, run_dag
from kmeans_ops import params as P
from kmeans_ops.driver import run_iterations
from kmeans_ops.engines import get_engine
from kmeans_ops.formats import read_clusters
from kmeans_ops.ingest import ingest
from kmeans_ops.workarea import WorkArea
from test_hadoop import HADOOP_DEV, hadoop  # noqa: F401 - the cluster fixture


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture()
def datanode_restored(hadoop):  # noqa: F811
    yield
    subprocess.run([HADOOP_DEV, "start", "datanode"], check=True, capture_output=True, timeout=300)


def staged(params, names, key):
    """Ingest photos locally and stage them on HDFS with the Hadoop engine (LocalJobRunner)."""
    local = WorkArea(tempfile.mkdtemp())
    for name in names:
        cv2.imwrite(os.path.join(local.root, f"{name}.png"), photo_bgr(name)[::2, ::2])
        ingest(os.path.join(local.root, f"{name}.png"), name, local, params)
    engine = get_engine("hadoop", framework="local")
    return engine, local, engine.stage(local, key)


def test_datanode_down_mid_run_fails_clearly_then_rerun_matches(datanode_restored):
    from kmeans_ops.hdfs import HdfsError

    params = P.validate(k=5, init="random", seed=4, max_iter=3, delta=0)
    engine, local, area = staged(params, ["coffee"], "test-datanode")
    engine.hdfs.retries, engine.hdfs.backoff = 2, 0.2
    points_before = digest(local.points("coffee"))
    try:
        engine.iterate(area, ["coffee"], 1, 0.0)
        subprocess.run([HADOOP_DEV, "stop", "datanode"], check=True, capture_output=True, timeout=120)
        with pytest.raises(Exception) as err:
            engine.iterate(area, ["coffee"], 2, 0.0)
        assert isinstance(err.value, HdfsError) or "Hadoop" in type(err.value).__name__
        assert "clusters-001" in str(err.value) or "points" in str(err.value) or "application" in str(err.value)
        assert "9870" in str(err.value) or "NameNode" in str(err.value) or "job" in str(err.value)
        subprocess.run([HADOOP_DEV, "start", "datanode"], check=True, capture_output=True, timeout=300)
        assert not engine.hdfs.exists(area.clusters("coffee", 2))  # nothing half-written
        for i in (2, 3):  # the re-run after the DataNode is back
            engine.iterate(area, ["coffee"], i, 0.0)
        fetched = engine.fetch(area, "coffee", tempfile.mkdtemp())
        hadoop_result = read_clusters(fetched.clusters("coffee", 3))
    finally:
        subprocess.run([HADOOP_DEV, "start", "datanode"], capture_output=True, timeout=300)
        engine.discard(area)
    reference = WorkArea(tempfile.mkdtemp())
    ingest(os.path.join(local.root, "coffee.png"), "coffee", reference, params)
    run_iterations(reference, ["coffee"], get_engine("local"), params)
    assert np.array_equal(hadoop_result, read_clusters(reference.clusters("coffee", 3)))
    assert digest(local.points("coffee")) == points_before  # the input is intact


def test_dag_with_hdfs_unreachable_publishes_nothing_then_rerun_succeeds(datanode_restored, airflow_db, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("KMEANS_HADOOP_FRAMEWORK", "local")
    images = tmp_path / "in"
    images.mkdir()
    cv2.imwrite(str(images / "rocket.png"), photo_bgr("rocket")[::2, ::2])
    before = digest(images / "rocket.png")
    conf = {"input": [str(images)], "engine": "hadoop", "k": 4, "max_iterations": 2, "output": str(tmp_path / "out")}
    subprocess.run([HADOOP_DEV, "stop", "datanode"], check=True, capture_output=True, timeout=120)
    failed = run_dag("kmeans_image_clustering", conf)
    assert failed.state == "failed"
    states = {ti.task_id: ti.state for ti in failed.get_task_instances()}
    assert states["upload"] == "failed" and states["publish"] != "success"
    published = [n for n in os.listdir(tmp_path / "out")] if (tmp_path / "out").exists() else []
    assert published == []  # nothing published, not even half a run
    from kmeans_ops.hdfs import Hdfs

    hdfs = Hdfs()
    leftovers = [n for n in hdfs.list(hdfs.home() + "/kmeans-work") if ".tmp-" in n] if hdfs.exists(
        hdfs.home() + "/kmeans-work") else []
    assert leftovers == []  # the failed upload's temporary folder was removed
    subprocess.run([HADOOP_DEV, "start", "datanode"], check=True, capture_output=True, timeout=300)
    again = run_dag("kmeans_image_clustering", conf)
    assert again.state == "success"
    result = json.load(open(tmp_path / "out" / "latest" / "rocket.json"))
    assert result["iterations"] == 2 and result["engine"] == "hadoop"
    assert digest(images / "rocket.png") == before


def test_killed_container_is_retried_and_the_job_succeeds(hadoop, monkeypatch):  # noqa: F811
    """SIGKILL a map task's container JVM on YARN: MapReduce runs the attempt again, the iteration
    succeeds with the same centroids as the embedded engine. (Uber mode off: in uber mode a small
    job's tasks run inside the ApplicationMaster, with no task container to kill.)"""
    monkeypatch.setenv("KMEANS_HADOOP_UBER", "false")
    params = P.validate(k=6, max_iter=1, delta=0)
    local = WorkArea(tempfile.mkdtemp())
    names = ["astronaut", "coffee", "rocket", "chelsea"]
    for name in names:
        cv2.imwrite(os.path.join(local.root, f"{name}.png"), photo_bgr(name))
        ingest(os.path.join(local.root, f"{name}.png"), name, local, params)
    engine = get_engine("hadoop", framework="yarn")
    area = engine.stage(local, "test-kill")
    killed = []

    def killer():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            found = subprocess.run(["pgrep", "-f", "org.apache.hadoop.mapred.YarnChild.*_m_"], capture_output=True, text=True)
            pids = found.stdout.split()
            if pids:
                subprocess.run(["kill", "-9", pids[0]])
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        figures = engine.iterate(area, names, 1, 0.0)
        thread.join(timeout=1)
        fetched = {n: read_clusters(engine.fetch(area, n, tempfile.mkdtemp()).clusters(n, 1)) for n in names}
    finally:
        killed.append("stop")
        engine.discard(area)
    assert killed[0] != "stop", "no map container was seen to kill"
    reference = WorkArea(tempfile.mkdtemp())
    for name in names:
        ingest(os.path.join(local.root, f"{name}.png"), name, reference, params)
    get_engine("local").iterate(reference, names, 1, 0.0)
    for name in names:
        assert np.array_equal(fetched[name], read_clusters(reference.clusters(name, 1)))
        assert figures[name]["iteration"] == 1
