"""hdfs:// outputs (engine hadoop): publication on the dev cluster's real HDFS and the results app
serving it read-only through WebHDFS. No mocks: every file is written to, renamed on and read from
HDFS, in a fresh folder hdfs://127.0.0.1:8020/tmp/kmeans-test-<uuid> removed afterwards.

- kmeans_ops.publish on HDFS: a staging folder published by renames, a re-publication by the same
  run replacing it, another run's folder and a foreign folder refused, the ``latest`` file, the
  states a killed swap leaves repaired.
- kmeans_ops.run.plan: an hdfs:// output accepted with engine hadoop, refused with engine local,
  checked against the allowed roots and against what the folder already holds.
- The results app on a real ``airflow api-server`` (the site of tests/test_ui_results.py, its
  helpers and test DAG reused) after real runs publishing on HDFS: the real DAG
  kmeans_image_clustering with engine hadoop (Hadoop Streaming on LocalJobRunner against the same
  HDFS; reconstruction into the HDFS staging folder) and the test DAG, whose PublishOperator gets
  one image's figures inline and the other's as a JSON file on HDFS.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from conftest import ROOT
from test_hadoop import hadoop  # noqa: F401 - the cluster fixture
from test_ui_results import DAG, TEST_DAG, TEST_DAG_SOURCE, Site, airflow, free_port, prepare_site, serving

NAMENODE = "hdfs://127.0.0.1:8020"
RUN = {"run_id": "manual__2026-12-01T00:00:00+00:00", "dag_id": DAG}
OTHER = {"run_id": "manual__2026-12-02T00:00:00+00:00", "dag_id": DAG}


def new_base(fs) -> str:
    base = f"{NAMENODE}/tmp/kmeans-test-{uuid.uuid4().hex}"
    fs.makedirs(base)
    return base


@pytest.fixture
def out(hadoop):  # noqa: F811 - the cluster fixture
    """A fresh output folder on HDFS (not created yet), its parent removed afterwards."""
    from kmeans_ops.paths import filesystem

    fs = filesystem(NAMENODE + "/")
    base = new_base(fs)
    yield f"{base}/out"
    fs.delete(base)


def fs_of(uri: str):
    from kmeans_ops.paths import filesystem

    return filesystem(uri)


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def stage(output: str, key: str, stem: str = "tile", seed: int = 0) -> list[dict]:
    """A reconstruction's files in run ``key``'s staging folder on HDFS, written with
    kmeans_ops.hdfs.Hdfs; returns the result list publish() takes (the JSON names the final folder)."""
    from kmeans_ops.hdfs import Hdfs
    from kmeans_ops.publish import final_dir, staging_dir

    client = Hdfs()
    staging, final = (fs_of(output).path(f(output, key)) for f in (staging_dir, final_dir))
    figures = {"image_id": stem, "source": f"/data/{stem}.png", "output": f"{NAMENODE}{final}/{stem}.png", "k": 2,
               "iterations": 1, "converged": True, "mse": 1.5, "psnr": 40.0, "seed": seed}
    client.write_bytes(f"{staging}/{stem}.png", png_bytes(seed))
    client.write_bytes(f"{staging}/{stem}.json", json.dumps(figures).encode())
    return [figures]


def names(folder: str) -> list[str]:
    return fs_of(folder).list(folder)


def summary(folder: str) -> dict:
    fs = fs_of(folder)
    return json.loads(fs.read_bytes(fs.join(folder, "summary.json")))


# ------------------------------------------------------------------ publication on HDFS
def test_a_staging_folder_on_hdfs_is_published_by_renames_with_its_report_and_latest(out):
    from kmeans_ops.publish import already_published, final_dir, is_published, publish, published_by, staging_dir

    fs = fs_of(out)
    results = stage(out, "key1", "tile", seed=1)
    assert not already_published(out, "key1")
    final = publish(out, "key1", results, [], RUN)
    assert final == final_dir(out, "key1") == f"{out}/key1"
    assert names(out) == ["key1", "latest"]  # no staging folder left, no local copy anywhere
    assert names(final) == ["report.html", "summary.json", "tile.json", "tile.png"]
    assert fs.read_bytes(f"{final}/tile.png") == png_bytes(1)
    assert fs.read_bytes(f"{out}/latest") == b"key1\n"  # HDFS has no symlinks: a file naming the run
    assert is_published(final) and published_by(final, DAG, RUN["run_id"])
    assert not published_by(final, DAG, OTHER["run_id"]) and not published_by(final, "other_dag", RUN["run_id"])
    assert summary(final)["run"]["run_id"] == RUN["run_id"] and summary(final)["images"][0]["seed"] == 1
    report = fs.read_bytes(f"{final}/report.html").decode()
    assert "data:image/" in report and "output image could not be read" not in report  # its thumbnail, from HDFS
    assert already_published(out, "key1") and not fs.exists(staging_dir(out, "key1"))
    assert not os.path.exists("hdfs:") and not os.path.exists(os.path.join(ROOT, "hdfs:"))


def test_a_republication_by_the_same_run_replaces_its_folder(out):
    from kmeans_ops.publish import publish

    first = publish(out, "key1", stage(out, "key1", "old", seed=1), [], RUN)
    before = summary(first)["run"]["published_at"]
    again = publish(out, "key1", stage(out, "key1", "new", seed=2), [], RUN)
    assert again == first
    assert names(again) == ["new.json", "new.png", "report.html", "summary.json"]  # the new folder, whole
    assert summary(again)["run"]["published_at"] > before
    assert names(out) == ["key1", "latest"]  # no .old-* or staging leftovers


def test_another_runs_folder_is_refused_unless_replace(out):
    from kmeans_ops.publish import PublishError, check_publishable, publish, staging_dir

    final = publish(out, "key1", stage(out, "key1"), [], RUN)
    before = fs_of(out).read_bytes(f"{final}/summary.json")
    with pytest.raises(PublishError, match="was published by another run.*replace_published"):
        check_publishable(out, "key1", OTHER["run_id"], DAG)
    with pytest.raises(PublishError, match="was published by another run"):
        publish(out, "key1", stage(out, "key1", seed=3), [], OTHER)
    assert fs_of(out).read_bytes(f"{final}/summary.json") == before  # untouched
    assert fs_of(out).is_folder(staging_dir(out, "key1"))  # the refused run's files stay where they were written
    publish(out, "key1", stage(out, "key1", seed=3), [], OTHER, replace=True)
    assert summary(final)["run"]["run_id"] == OTHER["run_id"]
    assert names(out) == ["key1", "latest"]


def test_a_folder_that_is_not_a_published_run_is_never_replaced(out):
    from kmeans_ops.publish import PublishError, check_publishable, publish

    fs = fs_of(out)
    fs.write_bytes(f"{out}/key1/notes.txt", b"a user's folder")
    for replace in (False, True):
        with pytest.raises(PublishError, match="exists and is not a published run"):
            check_publishable(out, "key1", RUN["run_id"], DAG, replace=replace)
        with pytest.raises(PublishError, match="exists and is not a published run"):
            publish(out, "key1", stage(out, "key1"), [], RUN, replace=replace)
    assert names(f"{out}/key1") == ["notes.txt"] and fs.read_bytes(f"{out}/key1/notes.txt") == b"a user's folder"
    assert not fs.exists(f"{out}/latest")


def test_latest_names_the_newest_run_and_only_our_own_latest_is_replaced(out):
    from kmeans_ops.publish import PublishError, check_publishable, publish

    fs = fs_of(out)
    publish(out, "key1", stage(out, "key1"), [], RUN)
    publish(out, "key2", stage(out, "key2"), [], OTHER)
    assert fs.read_bytes(f"{out}/latest") == b"key2\n"
    assert names(out) == ["key1", "key2", "latest"]  # the temporary name is gone
    for foreign in (b"password=hunter2\n", b"key1\nkey2\n", b"key1"):  # not one run key and a newline
        fs.write_bytes(f"{out}/latest", foreign)
        with pytest.raises(PublishError) as caught:
            check_publishable(out, "key3", OTHER["run_id"], DAG)
        assert "latest exists and is not a file naming the newest run" in str(caught.value)
        assert "hunter2" not in str(caught.value)  # never quoted
        with pytest.raises(PublishError):
            publish(out, "key3", stage(out, "key3"), [], OTHER)
        assert fs.read_bytes(f"{out}/latest") == foreign
    fs.delete(f"{out}/latest")
    fs.makedirs(f"{out}/latest")  # a folder named latest
    with pytest.raises(PublishError, match="latest exists and is not"):
        check_publishable(out, "key3", OTHER["run_id"], DAG)
    assert fs.is_folder(f"{out}/latest")


def test_the_states_a_killed_swap_leaves_are_repaired(out):
    """HDFS renames the old folder aside, then the new one in: a kill between them leaves no run
    folder and the old one aside; a kill after them leaves the old one aside beside the new one."""
    from kmeans_ops.publish import already_published, publish, staging_dir

    fs = fs_of(out)
    final = publish(out, "key1", stage(out, "key1", "first", seed=1), [], RUN)
    # killed between the renames: the old folder is aside, the new one still staged
    fs.rename(final, f"{out}/.old-key1-deadbeef0000")
    results = stage(out, "key1", "second", seed=2)
    assert not already_published(out, "key1")  # a retried publish sees the work is not done
    publish(out, "key1", results, [], RUN)
    assert names(out) == ["key1", "latest"]
    assert names(final) == ["report.html", "second.json", "second.png", "summary.json"]
    # killed after the renames, before the old folder was deleted
    fs.makedirs(f"{out}/.old-key1-cafe00000000")
    fs.write_bytes(f"{out}/.old-key1-cafe00000000/summary.json", b"{}")
    assert already_published(out, "key1")  # done: the leftover is removed
    assert names(out) == ["key1", "latest"]
    # the old folder under the staging name (an older summary than the final one's)
    old = publish(out, "key-old", stage(out, "key-old", "old", seed=3), [], RUN)
    time.sleep(0.01)
    publish(out, "key1", stage(out, "key1", "third", seed=4), [], RUN)
    fs.rename(old, staging_dir(out, "key1"))
    assert already_published(out, "key1")
    assert "key1" in names(out) and not fs.exists(staging_dir(out, "key1"))
    assert "third.png" in names(final)


# ------------------------------------------------------------------ run.plan with an hdfs:// output
def plan_conf(tmp_path, **changes) -> dict:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "tile.png"), cv2.imdecode(np.frombuffer(png_bytes(0), np.uint8), cv2.IMREAD_COLOR))
    conf = {"input": [str(folder)], "k": 2, "init": "kmeans++", "seed": 0, "max_iterations": 2, "delta": 1.0,
            "engine": "hadoop", "batch_size": 64}
    return {**conf, **changes}


def test_plan_accepts_an_hdfs_output_with_engine_hadoop_and_writes_nothing(out, tmp_path):
    from kmeans_ops.run import plan, run_key

    run = plan(plan_conf(tmp_path, output=out + "/./"), RUN["run_id"], DAG)
    assert run["output"] == out and run["engine"] == "hadoop"
    assert run["key"] == run_key(RUN["run_id"])
    assert not fs_of(out).exists(out)  # nothing written
    assert not os.path.exists(tmp_path / "hdfs:")


def test_plan_refuses_an_hdfs_output_with_engine_local(out, tmp_path, monkeypatch):
    from kmeans_ops.params import ParamError
    from kmeans_ops.run import plan

    monkeypatch.chdir(tmp_path)
    for output in (out, "hdfs:///tmp/out"):
        with pytest.raises(ParamError) as caught:
            plan(plan_conf(tmp_path, output=output, engine="local"), RUN["run_id"], DAG)
        message = str(caught.value)
        assert message.startswith(f"output: {output} names the filesystem 'hdfs', which is not supported")
        assert "needs engine hadoop" in message
    with pytest.raises(ParamError, match="^output: hdfs:/tmp/out names the filesystem"):  # one slash: not HDFS
        plan(plan_conf(tmp_path, output="hdfs:/tmp/out"), RUN["run_id"], DAG)
    assert sorted(os.listdir(tmp_path)) == ["in"]  # no local folder named hdfs:


def test_plan_checks_an_hdfs_output_against_the_roots_and_what_it_holds(out, tmp_path, monkeypatch):
    from kmeans_ops.params import ParamError
    from kmeans_ops.paths import PathNotAllowed
    from kmeans_ops.publish import final_dir
    from kmeans_ops.run import plan, run_key

    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS", json.dumps([str(tmp_path), f"{out}/allowed"]))
    for output in (f"{out}/elsewhere", f"{out}/allowed/../elsewhere", "hdfs:///"):
        with pytest.raises(PathNotAllowed) as caught:
            plan(plan_conf(tmp_path, output=output), RUN["run_id"], DAG)
        assert str(caught.value).startswith(f"output: {output} is outside the allowed roots")
    allowed = f"{out}/allowed"
    assert plan(plan_conf(tmp_path, output="hdfs:///" + allowed.split("/", 3)[3]), RUN["run_id"], DAG)
    fs_of(out).write_bytes(f"{final_dir(allowed, run_key(RUN['run_id']))}/mine.txt", b"x")
    with pytest.raises(ParamError, match="^output: .* exists and is not a published run"):
        plan(plan_conf(tmp_path, output=allowed), RUN["run_id"], DAG)


def test_publish_operator_takes_figures_inline_or_from_a_json_file_on_hdfs(out):
    from kmeans_plugin.operators import PublishOperator

    (figures,) = stage(out, "key1", "tile", seed=5)
    on_hdfs = f"{out}/.staging-key1/tile.json"
    assert PublishOperator.figures_of({"ok": True, "json": on_hdfs}) == figures
    assert PublishOperator.figures_of({"ok": True, "figures": {"k": 3}, "json": on_hdfs}) == {"k": 3}  # inline first


# ------------------------------------------------------------------ the results app, real runs on HDFS
@pytest.fixture(scope="module")
def hdfs_site(hadoop, tmp_path_factory):  # noqa: F811 - the cluster fixture
    """An API server after two runs published on HDFS under one output folder: ``real``, the real
    DAG with engine hadoop (LocalJobRunner), and ``inline``, the test DAG of tests/test_ui_results.py
    with ``how`` "hdfs" (china's figures inline, coffee's as a JSON file on HDFS)."""
    from kmeans_ops.paths import filesystem

    fs = filesystem(NAMENODE + "/")
    base = new_base(fs)
    out = f"{base}/out"
    tmp = tmp_path_factory.mktemp("hdfs-ui")
    extra = {"KMEANS_HADOOP_FRAMEWORK": "local"}  # the jobs in the client JVM, against the same HDFS
    if os.environ.get("AIRFLOW_CONN_WEBHDFS_DEFAULT"):
        extra["AIRFLOW_CONN_WEBHDFS_DEFAULT"] = os.environ["AIRFLOW_CONN_WEBHDFS_DEFAULT"]
    home, photos, env = prepare_site(tmp, TEST_DAG, TEST_DAG_SOURCE, extra)
    site = Site(free_port(), env, tmp, [photos, out])
    site.out, site.base_uri = out, base
    try:
        airflow(env, "db", "migrate")
        airflow(env, "variables", "set", "kmeans_allowed_roots", json.dumps(site.roots))
        conf = {"input": [photos], "output": out, "engine": "hadoop", "k": 3}
        site.logs["real"] = airflow(env, "dags", "test", DAG, "-c", json.dumps({**conf, "max_iterations": 2})).stdout
        site.logs["inline"] = airflow(env, "dags", "test", TEST_DAG, "-c", json.dumps({**conf, "how": "hdfs"})).stdout
        with serving(site, home):
            (site.runs["real"],) = [r["dag_run_id"] for r in site.api(f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]]
            (site.runs["inline"],) = [r["dag_run_id"] for r in site.api(f"/api/v2/dags/{TEST_DAG}/dagRuns")["dag_runs"]]
            yield site
    finally:
        fs.delete(base)


def published_names(folder: str) -> list[str]:
    stems = [os.path.splitext(os.path.basename(i["output"]))[0] for i in summary(folder)["images"]]
    return ["report.html", "summary.json"] + [stem + ext for stem in stems for ext in (".png", ".json")]


@pytest.mark.parametrize("which, dag_id", [("real", DAG), ("inline", TEST_DAG)])
def test_a_run_published_on_hdfs_is_served_through_webhdfs(hdfs_site, which, dag_id):
    from kmeans_ops.run import run_key

    site, run = hdfs_site, hdfs_site.runs[which]
    folder = site.folder(dag_id, run)
    assert folder == f"{site.out}/{run_key(run)}"  # what publish returned: the folder on HDFS
    names = published_names(folder)
    assert sum(name.endswith(".png") for name in names) == 2
    types = {".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json"}
    fs = fs_of(folder)
    for name in names:
        status, headers, body = site.request(site.run_url(dag_id, run, name))
        assert status == 200, (name, status, body[:300])
        assert body == fs.read_bytes(fs.join(folder, name)), name
        assert headers["content-type"] == types[os.path.splitext(name)[1]], name
        assert headers["x-content-type-options"] == "nosniff"
    _, headers, report = site.request(site.run_url(dag_id, run))
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b"output image could not be read" not in report  # thumbnails from the images on HDFS
    images = summary(folder)["images"]
    assert [i["output"] for i in images] == [f"{folder}/china.png", f"{folder}/coffee.png"]
    assert all(i["k"] == 3 and i["seconds"] is not None for i in images)
    assert not [n for n in fs.list(site.out) if n.startswith((".staging-", ".old-"))]
    for where in (site.tmp, ROOT):
        assert not os.path.exists(os.path.join(where, "hdfs:"))  # nothing written to a local "hdfs:" folder


def test_latest_on_hdfs_and_the_report_link_and_asset_event_of_an_hdfs_publication(hdfs_site):
    from kmeans_ops.run import run_key

    site, run = hdfs_site, hdfs_site.runs["inline"]
    assert fs_of(site.out).read_bytes(f"{site.out}/latest") == f"{run_key(run)}\n".encode()  # the newer run
    folder = site.folder(TEST_DAG, run)
    links = site.api(f"/api/v2/dags/{TEST_DAG}/dagRuns/{quote(run, safe='')}/taskInstances/publish/links")
    assert links["extra_links"] == {"Report": site.run_url(TEST_DAG, run)}
    events = site.api(f"/api/v2/assets/events?source_dag_id={TEST_DAG}&source_run_id={quote(run, safe='')}")
    assert [e["extra"] for e in events["asset_events"]] == [{"folder": folder, "run_id": run}]


def test_the_results_page_lists_the_hdfs_run_with_its_report(hdfs_site):
    site, run = hdfs_site, hdfs_site.runs["real"]
    status, _, page = site.request("/kmeans/results")
    text = page.decode()
    assert status == 200 and f"<code>{run}</code>" in text
    assert f'href="runs/{DAG}/{quote(run, safe="")}/report.html"' in text
    assert '<td class="num images">2</td>' in text


def test_names_that_leave_an_hdfs_run_folder_are_404(hdfs_site):
    site, run = hdfs_site, hdfs_site.runs["real"]
    folder = site.folder(DAG, run)
    other = site.folder(TEST_DAG, site.runs["inline"])
    fs = fs_of(folder)
    planted = {f"{site.out}/secret.json": b'{"secret": true}', f"{folder}/.hidden.json": b'{"secret": 1}',
               f"{folder}/notes.txt": b"secret"}
    for path, data in planted.items():
        fs.write_bytes(path, data)
    fs.makedirs(f"{folder}/sub.json")
    try:
        key = other.rsplit("/", 1)[1]
        bad = [
            f"../{key}/report.html", f"%2e%2e/{key}/report.html", f"%2e%2e%2f{key}%2freport.html",
            f"..%2F{key}%2Freport.html", "../secret.json", "%2e%2e%2fsecret.json", "..", "%2e%2e", ".",
            "/" + fs.path(f"{site.out}/secret.json").lstrip("/"), quote(f"{site.out}/secret.json", safe=""),
            quote(f"{other}/report.html", safe=""), "summary.json%00.png", ".hidden.json", "notes.txt", "sub.json",
            "no-such.png", "report.html/", "china.png/..", "sub.json/x.png",
        ]
        for name in bad:
            status, _, body = site.request(f"/kmeans/runs/{DAG}/{quote(run, safe='')}/{name}")
            assert status == 404, (name, status, body[:200])
            assert b"secret" not in body and b"<html" not in body
        assert site.request(site.run_url(DAG, run))[0] == 200  # a name inside: served
    finally:
        for path in planted:
            fs.delete(path)
        fs.delete(f"{folder}/sub.json")


def test_an_hdfs_run_outside_the_allowed_roots_or_of_another_run_is_not_served(hdfs_site):
    site = hdfs_site
    real, inline = site.runs["real"], site.runs["inline"]
    site.set_roots([site.roots[0]])  # the photos only: the output folder on HDFS is now outside
    try:
        for name in ("report.html", "china.png", "summary.json"):
            status, _, body = site.request(site.run_url(DAG, real, name))
            assert status == 404 and b"<html" not in body, (name, status)
        status, _, page = site.request("/kmeans/results")
        assert status == 200 and real.encode() in page and b'class="report"' not in page
    finally:
        site.set_roots(site.roots)
    assert site.request(site.run_url(DAG, real))[0] == 200
    # someone who may edit XComs points the inline run at the real run's folder: nothing is served
    own, other = site.folder(TEST_DAG, inline), site.folder(DAG, real)
    path = f"/api/v2/dags/{TEST_DAG}/dagRuns/{quote(inline, safe='')}/taskInstances/publish/xcomEntries/return_value"
    aliases = (other, other.replace(NAMENODE, "hdfs://"), f"{site.base_uri}/elsewhere/../out/{other.rsplit('/', 1)[1]}")
    for value in aliases:  # the real run's folder, however it is spelled
        site.api(path, "PATCH", {"value": value, "map_index": -1})
        try:
            for name in ("report.html", "summary.json"):
                status, _, body = site.request(site.run_url(TEST_DAG, inline, name))
                assert status == 404 and b"<html" not in body, (value, name, status)
        finally:
            site.api(path, "PATCH", {"value": own, "map_index": -1})
    assert site.request(site.run_url(TEST_DAG, inline))[0] == 200
    assert site.request(site.run_url(DAG, real))[0] == 200
