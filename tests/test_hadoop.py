"""Cluster mode against a real Hadoop: HDFS through WebHDFS, Hadoop Streaming on YARN and on
LocalJobRunner (against the same HDFS). The dev cluster is started here if it is not up."""

import json
import os
import subprocess
import tempfile

import cv2
import numpy as np
import pytest

from conftest import ROOT, photo_bgr, run_cli, run_dag
from kmeans_ops import params as P
from kmeans_ops.driver import run_iterations
from kmeans_ops.formats import read_clusters
from kmeans_ops.ingest import ingest
from kmeans_ops.workarea import WorkArea

HADOOP_DEV = os.path.join(ROOT, "bin", "hadoop-dev")


@pytest.fixture(scope="session")
def hadoop():
    """A running dev cluster (HDFS + YARN); stopped at the end if this session started it."""
    started = subprocess.run([HADOOP_DEV, "status"], capture_output=True).returncode != 0
    if started:
        subprocess.run([HADOOP_DEV, "up"], check=True, capture_output=True, timeout=900)
    yield
    if started:
        subprocess.run([HADOOP_DEV, "down"], check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hadoop-photos")
    cv2.imwrite(str(folder / "coffee.png"), photo_bgr("coffee")[::2, ::2])
    cv2.imwrite(str(folder / "rocket.png"), photo_bgr("rocket")[::2, ::2])
    cv2.imwrite(str(folder / "chelsea.png"), photo_bgr("chelsea")[::2, ::2])
    return folder


def hdfs():
    from kmeans_ops.hdfs import Hdfs

    return Hdfs()


def test_cli_hadoop_engine_equals_local_engine(hadoop, photos, tmp_path, monkeypatch):
    """LocalJobRunner against the real HDFS: same centroids (to the bit) and identical images."""
    monkeypatch.setenv("KMEANS_HADOOP_FRAMEWORK", "local")
    common = ["-k", 5, "--init", "random", "--seed", 2, "--max-iter", 4, "--delta", 0, "-q"]
    status, err = run_cli("quantize", photos, "--engine", "hadoop", "--out", tmp_path / "h", *common)
    assert status == 0, err
    status, err = run_cli("quantize", photos, "--engine", "local", "--out", tmp_path / "l", *common)
    assert status == 0, err
    for stem in ("coffee", "rocket", "chelsea"):
        h = json.load(open(tmp_path / "h" / f"{stem}.json"))
        l = json.load(open(tmp_path / "l" / f"{stem}.json"))
        assert h["engine"] == "hadoop" and l["engine"] == "local"
        assert h["centroids_rgb"] == l["centroids_rgb"] and h["iterations"] == l["iterations"]
        assert [x["max_shift"] for x in h["history"]] == [x["max_shift"] for x in l["history"]]
        assert np.array_equal(cv2.imread(str(tmp_path / "h" / f"{stem}.png")), cv2.imread(str(tmp_path / "l" / f"{stem}.png")))
    # nothing left behind on HDFS
    assert not [n for n in hdfs().list(hdfs().home() + "/kmeans-work") if n.startswith("cli-")]


def test_one_job_per_iteration_for_a_batch(hadoop, photos):
    from kmeans_ops.engines.hadoop import HadoopEngine

    params = P.validate(k=4, max_iter=3, delta=0)
    local = WorkArea(tempfile.mkdtemp())
    ids = []
    for path in sorted(photos.iterdir()):
        ingest(str(path), path.stem, local, params)
        ids.append(path.stem)
    engine = HadoopEngine(framework="local")
    area = engine.stage(local, "test-batch")
    try:
        state = run_iterations(area, ids, engine, params)
        assert engine.jobs == 3 and all(s["iterations"] == 3 for s in state.values())
        for image_id in ids:  # the state files are on HDFS, in the same layout as locally
            assert hdfs().exists(area.clusters(image_id, 3)) and hdfs().exists(area.stats(image_id, 3))
    finally:
        engine.discard(area)
    assert not hdfs().exists(area.root)


def test_failed_job_names_application_url_and_task_stderr(hadoop, photos):
    """A corrupt points line on YARN: the error carries the application id, tracking URL and the
    mapper's own message from the failing task's stderr."""
    from kmeans_ops.engines.hadoop import HadoopEngine, HadoopJobError

    params = P.validate(k=3, max_iter=1)
    local = WorkArea(tempfile.mkdtemp())
    ingest(str(photos / "coffee.png"), "coffee", local, params)
    with open(local.points("coffee"), "ab") as handle:
        handle.write(b"coffee\t999 000 000 0000000001\n")
    engine = HadoopEngine(framework="yarn")
    area = engine.stage(local, "test-failure")
    try:
        with pytest.raises(HadoopJobError) as err:
            engine.iterate(area, ["coffee"], 1, 1.0)
    finally:
        engine.discard(area)
    text = str(err.value)
    assert "application_" in text and "http" in text
    assert "colour value above 255" in text  # from the mapper's stderr, via the NodeManager


def test_hdfs_error_names_path_and_namenode():
    from kmeans_ops.hdfs import Hdfs, HdfsError

    os.environ["AIRFLOW_CONN_WEBHDFS_BROKEN"] = json.dumps({"conn_type": "webhdfs", "host": "127.0.0.1", "port": 9})
    broken = Hdfs(conn_id="webhdfs_broken", retries=1, backoff=0.1)
    with pytest.raises(HdfsError) as err:
        broken.read_bytes("/some/file.tsv")
    assert "/some/file.tsv" in str(err.value) or "127.0.0.1" in str(err.value)


def test_dag_on_yarn_with_data_in_hdfs(hadoop, airflow_db, photos, tmp_path):
    """kmeans_image_clustering with engine=hadoop: inputs read from HDFS, jobs on YARN, same
    results as the CLI's embedded engine."""
    client = hdfs()
    remote = client.home() + "/test-input"
    if client.exists(remote):
        client.delete(remote)
    client.makedirs(remote)
    for name in ("coffee.png", "rocket.png"):
        client.write_bytes(f"{remote}/{name}", (photos / name).read_bytes())
    conf = {"input": [f"hdfs://127.0.0.1:8020{remote}"], "engine": "hadoop", "k": 4, "max_iterations": 2,
            "seed": 5, "output": str(tmp_path / "out")}
    dag_run = run_dag("kmeans_image_clustering", conf)
    assert dag_run.state == "success"
    tis = {(ti.task_id, ti.map_index): ti for ti in dag_run.get_task_instances()}
    assert [k for k in tis if k[0] == "iteration_01.mapreduce"] == [("iteration_01.mapreduce", 0)]  # 2 images, 1 job
    from kmeans_ops.run import run_key

    folder = tmp_path / "out" / run_key(dag_run.run_id)
    local_in = tmp_path / "local-in"
    local_in.mkdir()
    for name in ("coffee.png", "rocket.png"):
        (local_in / name).write_bytes((photos / name).read_bytes())
    status, err = run_cli("quantize", local_in, "-k", 4, "--max-iter", 2, "--seed", 5, "--out", tmp_path / "cli", "-q")
    assert status == 0, err
    for stem in ("coffee", "rocket"):
        a = json.load(open(folder / f"{stem}.json"))
        b = json.load(open(tmp_path / "cli" / f"{stem}.json"))
        assert a["source"].startswith("hdfs://") and a["engine"] == "hadoop"
        assert a["centroids_rgb"] == b["centroids_rgb"]
        assert np.array_equal(cv2.imread(str(folder / f"{stem}.png")), cv2.imread(str(tmp_path / "cli" / f"{stem}.png")))
    # the MapReduce task links to its YARN application; the work area on HDFS is cleaned up
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        urls = [x.value for x in session.query(XComModel).filter_by(
            run_id=dag_run.run_id, task_id="iteration_01.mapreduce", key="kmeans_yarn_url")]
    assert urls and "application_" in json.dumps(urls)
    assert not [n for n in client.list(client.home() + "/kmeans-work") if n == run_key(dag_run.run_id)]
    client.delete(remote)


def test_nightly_ledger_scans_an_hdfs_landing_root(hadoop, photos, tmp_path):
    """The nightly scan lists images on HDFS like local ones, keyed by their HDFS checksum: a copy
    is not new. Files just written have not settled (default settle_seconds, 300 s); a file still
    being uploaded is never taken, whatever settle_seconds: HDFS lists it at length 0 with its
    creation time, so only the NameNode's "under construction" gives it away (and it has no
    checksum yet). Once closed, it is taken, with the key of its whole content."""
    import threading
    import time

    from kmeans_ops import ledger as L
    from kmeans_ops.paths import HdfsFS

    client = hdfs()
    root = client.home() + "/test-landing"
    uri = f"hdfs://127.0.0.1:8020{root}"
    if client.exists(root):
        client.delete(root)
    client.makedirs(root + "/day1")
    client.write_bytes(root + "/day1/coffee.png", (photos / "coffee.png").read_bytes())
    client.write_bytes(root + "/day1/copy-of-coffee.png", (photos / "coffee.png").read_bytes())
    client.write_bytes(root + "/day1/notes.txt", b"not an image")
    try:
        assert L.scan([uri]) == []  # just written: not settled yet
        found = L.scan([uri], settle_seconds=0)
        assert [f["path"] for f in found] == [f"{uri}/day1/{n}" for n in ("coffee.png", "copy-of-coffee.png")]
        assert found[0]["digest"].startswith("hdfs-") and found[0]["digest"] == found[1]["digest"]  # the checksum
        assert found[0]["size"] == (photos / "coffee.png").stat().st_size
        ledger = L.Ledger.load(str(tmp_path / "ledger.json"))
        assert len(L.new_files(found, ledger)) == 1  # the copy is the same content

        png = (photos / "rocket.png").read_bytes()
        for head in (png[:8], png[: len(png) // 3]):  # nothing readable yet; a third readable
            path = root + "/day1/uploading.png"
            release = threading.Event()

            def body():
                yield head
                release.wait(60)
                yield png[len(head):]

            upload = threading.Thread(target=client.client.write, args=(path,),
                                      kwargs={"data": body(), "overwrite": True})
            upload.start()
            try:
                deadline = time.monotonic() + 30
                while not client.exists(path) and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(1)  # the DataNode has what it was sent so far
                assert [f["path"] for f in L.scan([uri], settle_seconds=0)] == [f"{uri}/day1/{n}" for n in (
                    "coffee.png", "copy-of-coffee.png")]
            finally:
                release.set()
                upload.join()
            taken = {f["path"]: f for f in L.scan([uri], settle_seconds=0)}[f"{uri}/day1/uploading.png"]
            assert taken["size"] == len(png) and L.new_files([taken], ledger) == [taken]
            client.write_bytes(root + "/.whole.png", png)  # the same bytes written at once: the same key
            assert taken["digest"] == HdfsFS(client).content_key(f"{uri}/.whole.png")[0]
    finally:
        client.delete(root)


def test_cli_with_hdfs_unreachable_exits_3_and_writes_nothing(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_DEFAULT", json.dumps({"conn_type": "webhdfs", "host": "127.0.0.1",
                                                                   "port": 9, "login": "nobody"}))
    monkeypatch.setenv("KMEANS_HDFS_RETRIES", "1")
    status, err = run_cli("quantize", photos / "coffee.png", "--engine", "hadoop", "-k", 3, "--out", tmp_path / "out")
    assert status == 3 and "HDFS" in err and "127.0.0.1" in err
    assert os.listdir(tmp_path / "out") == []


def test_clients_ask_again_soon_after_closing_a_file(hadoop):
    """The running daemons (not only the files): the DataNode, whose own HDFS client writes every
    WebHDFS file, and the NodeManager (ApplicationMasters) ask the NameNode again after 20 ms, not
    Hadoop's 400, whether a closed file's last block is complete (docs/hadoop.md: 9.8 s -> 5.5-6 s
    per YARN iteration); with enough retries that a slow block report still gets 20 s."""
    import requests

    from kmeans_ops.engines.hadoop import conf_value

    name = "dfs.client.block.write.locateFollowingBlock"
    for daemon in ("dfs.datanode.http.address", "yarn.nodemanager.webapp.address"):
        address = conf_value(daemon).replace("0.0.0.0", "127.0.0.1")
        values = {}
        for suffix in ("initial.delay.ms", "retries"):
            answer = requests.get(f"http://{address}/conf", params={"name": f"{name}.{suffix}"},
                                  headers={"Accept": "application/json"}, timeout=10)
            answer.raise_for_status()
            values[suffix] = int(answer.json()["property"]["value"])
        assert values["initial.delay.ms"] <= 50, (daemon, values)
        assert values["initial.delay.ms"] * (2 ** values["retries"] - 1) >= 10_000, (daemon, values)
    assert int(conf_value(f"{name}.initial.delay.ms")) <= 50  # the client's (job submission)
