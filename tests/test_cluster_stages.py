"""Cluster mode where the data lives (real HDFS and YARN of the dev cluster): with images in HDFS
and an hdfs:// --out, ingest and reconstruction run as map-only jobs on the nodes, and the
submitting process reads (almost) none of the images' bytes."""

import json
import os
import sys
import uuid

import cv2
import numpy as np
import pytest

from conftest import ROOT, photo_bgr, run_cli

sys.path.insert(0, os.path.join(ROOT, "bench"))
import measure_reads  # noqa: E402
from test_hadoop import hadoop, hdfs  # noqa: F401 - the cluster fixture

PHOTOS = ("coffee", "rocket", "chelsea")
COMMON = ["-k", 6, "--seed", 3, "--max-iter", 3, "--delta", 0, "--labels"]


def _measured_run(*argv, env=None) -> tuple[int, str, "measure_reads.Reads"]:
    """The CLI in a process of its own; (status, stderr, what the process read from files and
    sockets, measured as it exits: bench/measure_reads.py)."""
    return measure_reads.run_cli(*argv, env=env)


def _tiny_run(landed, name: str) -> tuple[int, str, int]:
    """The same command on one 8x8 image in a folder of its own."""
    client = hdfs()
    tiny = f"{landed['hdfs']}/{name}"
    client.write_bytes(f"{tiny}/in/tiny.png", cv2.imencode(".png", photo_bgr("coffee")[:8, :8])[1].tobytes())
    return _measured_run("quantize", f"hdfs://127.0.0.1:8020{tiny}/in", "--engine", "hadoop",
                      "--out", f"hdfs://127.0.0.1:8020{tiny}/out", *COMMON)


@pytest.fixture(scope="module")
def landed(hadoop, tmp_path_factory):  # noqa: F811
    """Three photos and a broken image in a fresh HDFS folder, the same files in a local one."""
    local = tmp_path_factory.mktemp("cluster-photos")
    for name in PHOTOS:
        cv2.imwrite(str(local / f"{name}.png"), photo_bgr(name)[::2, ::2])
    png = (local / "coffee.png").read_bytes()
    (local / "broken.png").write_bytes(png[: len(png) // 3])
    folder = f"/tmp/test-cluster-{uuid.uuid4().hex[:8]}"
    client = hdfs()
    client.makedirs(folder + "/in")
    for path in local.iterdir():
        client.write_bytes(f"{folder}/in/{path.name}", path.read_bytes())
    return {"local": local, "hdfs": folder, "uri": f"hdfs://127.0.0.1:8020{folder}"}


@pytest.fixture(scope="module")
def cluster_run(landed):
    """The CLI on the HDFS folder into an hdfs:// --out that already holds a foreign rocket.png,
    after a warm-up run on a tiny image (the first job of a just-started cluster and the first
    client JVM of a machine read more, whatever the images: not what is measured here)."""
    status, err, _ = _tiny_run(landed, "warm-up")
    assert status == 0, err
    client = hdfs()
    client.write_bytes(f"{landed['hdfs']}/out/rocket.png", b"someone else's file")
    status, err, read = _measured_run("quantize", landed["uri"] + "/in", "--engine", "hadoop",
                                    "--out", landed["uri"] + "/out", *COMMON)
    return {"status": status, "err": err, "read": read}


def test_cluster_stages_equal_the_embedded_engine(landed, cluster_run, tmp_path):
    """Same output images (pixel for pixel, label maps too) and centroids as --engine local on the
    same files; the broken image fails alone with the local run's message; a foreign file in the
    output folder is left alone (the image takes the next name)."""
    assert cluster_run["status"] == 1, cluster_run["err"]  # one image failed
    status, err = run_cli("quantize", landed["local"], "--engine", "local", "--out", tmp_path, "-q", *COMMON)
    assert status == 1, err
    local_error = [line for line in err.splitlines() if line.startswith("error:")]
    cluster_error = [line for line in cluster_run["err"].splitlines() if line.startswith("error:")]
    assert len(local_error) == len(cluster_error) == 1
    assert cluster_error[0].replace(landed["uri"] + "/in", str(landed["local"])) == local_error[0]

    client = hdfs()
    out = f"{landed['hdfs']}/out"
    names = sorted(client.list(out))
    assert names == sorted(["rocket.png", "rocket-2.png", "rocket-2-labels.png", "rocket-2.json"]
                           + [f"{s}{x}" for s in ("coffee", "chelsea") for x in (".png", "-labels.png", ".json")])
    assert client.read_bytes(f"{out}/rocket.png") == b"someone else's file"
    for stem, remote in (("coffee", "coffee"), ("chelsea", "chelsea"), ("rocket", "rocket-2")):
        figures = json.loads(client.read_bytes(f"{out}/{remote}.json"))
        expected = json.load(open(tmp_path / f"{stem}.json"))
        assert figures["engine"] == "hadoop" and expected["engine"] == "local"
        assert figures["centroids_rgb"] == expected["centroids_rgb"]
        assert figures["initial_centroids_rgb"] == expected["initial_centroids_rgb"]
        assert figures["iterations"] == expected["iterations"] == 3
        assert figures["output"] == f"{landed['uri']}/out/{remote}.png"
        assert figures["source"] == f"{landed['uri']}/in/{stem}.png"
        for suffix in (".png", "-labels.png"):
            got = cv2.imdecode(np.frombuffer(client.read_bytes(f"{out}/{remote}{suffix}"), np.uint8), cv2.IMREAD_UNCHANGED)
            want = cv2.imread(str(tmp_path / f"{stem}{suffix}"), cv2.IMREAD_UNCHANGED)
            assert got.shape == want.shape and np.array_equal(got, want)
    # nothing left behind: no staging folder in the output, no work area of the run
    assert not [n for n in client.list(out) if n.startswith(".")]


def test_submitter_reads_almost_none_of_the_images(landed, cluster_run):
    """The submitting process reads at most 10% of the images' bytes more than the same command on
    one tiny image, from files and from HDFS (everything but the ResourceManager's job reports,
    which grow with the run's length: they are bounded apart, a few KB per poll)."""
    status, err, tiny = _tiny_run(landed, "tiny")
    assert status == 0, err
    image_bytes = sum(os.path.getsize(landed["local"] / f"{name}.png") for name in PHOTOS)
    many = cluster_run["read"]
    extra = many.data - tiny.data
    assert extra <= 0.10 * image_bytes, (extra, image_bytes, many, tiny)
    assert 0 < many.control < 5_000_000, many  # polled, and not a channel for data


def test_pixel_budget_is_checked_on_the_node(landed, tmp_path):
    """The node refuses an image over the pixel budget before decoding it, with the local message;
    nothing is written for it."""
    budget = {"KMEANS_MAX_PIXELS": "1000"}
    out = f"{landed['uri']}/budget-{uuid.uuid4().hex[:6]}"
    status, err, _ = _measured_run("quantize", landed["uri"] + "/in/coffee.png", "--engine", "hadoop", "--out", out,
                                *COMMON, env=budget)
    assert status == 1, err
    line = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and "pixel budget" in line[0] and "coffee.png" in line[0], err
    client = hdfs()
    assert client.list(out.replace("hdfs://127.0.0.1:8020", "")) == []


@pytest.mark.parametrize("argv, message", [
    (["--engine", "local"], "an hdfs:// output needs --engine hadoop"),
    (["--engine", "hadoop", "--palette", "run"], "--palette image only"),
])
def test_hdfs_output_refusals(landed, argv, message):
    status, err = run_cli("quantize", landed["uri"] + "/in/coffee.png", "--out", landed["uri"] + "/refused", *argv)
    assert status == 2 and message in err, err
    assert not hdfs().exists(landed["hdfs"] + "/refused")


def test_hdfs_output_refuses_local_inputs(landed):
    status, err = run_cli("quantize", landed["local"] / "coffee.png", "--engine", "hadoop",
                          "--out", landed["uri"] + "/refused2")
    assert status == 2 and "needs every input in HDFS" in err, err
