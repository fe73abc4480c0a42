"""Results in the UI: the plugin's results app, the Report link of PublishOperator and the results
page, on a real Airflow API server after real runs.

The site (one per module): a temporary AIRFLOW_HOME with a SQLite metadata DB; ``airflow dags
test`` runs the real DAG kmeans_image_clustering (this checkout's file, linked into a temporary
dags folder, with this checkout's plugin) on two small real photos, and the test DAG
kmeans_ui_publish (below: the project's CLI, then the plugin's PublishOperator) in three outcomes;
then ``airflow api-server`` serves them on a free port, in its own process group (stopped with its
workers at the end). The allowed roots are the Airflow Variable kmeans_allowed_roots in the
metadata DB, as an administrator sets them, so a test can narrow them while the server runs.

Why a real server rather than FastAPI's TestClient over the app factory: the plugin app is mounted
by the API server's own start-up (plugin loading, the auth manager and its JWT signer, the UI's
token cookie, the middlewares), which is what these tests must exercise, and the browser test needs
a server anyway. Requests go through http.client, which sends a path exactly as written (``..``,
``%2e%2e``, ``//`` included), as a hostile client would.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from urllib.parse import quote, urljoin

import cv2
import pytest

from conftest import ROOT, photo_bgr

AIRFLOW = os.path.join(os.path.dirname(sys.executable), "airflow")
DAG = "kmeans_image_clustering"
TEST_DAG = "kmeans_ui_publish"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

TEST_DAG_SOURCE = '''
"""Test DAG of tests/test_ui_results.py: a run published by the plugin's PublishOperator.

``prepare`` plans the run as the real DAG does (kmeans_ops.run.plan); ``quantize``, mapped one
image per task, runs the project's CLI into the run's staging folder, so that PublishOperator gets
a list of lists. Param ``how``: "ok"; "fail" reports every image failed; "squat" puts a folder that
is not a published run where the run publishes; "hdfs" (an hdfs:// output, engine hadoop; used by
tests/test_hdfs_publish.py) runs the CLI into a local folder and uploads its files into the staging
folder on HDFS.
"""

import json
import os
import shutil
import tempfile
import time

from airflow.sdk import Asset, Param, dag, task
from kmeans_plugin.operators import PublishOperator

RESULTS = Asset(name="kmeans_ui_results", uri="file:///kmeans-ui-results")


def uploaded(local: str, stem: str, run: dict, seconds: float) -> dict:
    """An image's PNG and JSON, written by the CLI into ``local``, uploaded into the run's staging
    folder on HDFS (the JSON naming the final folder); its figures returned inline for china (as a
    reconstruction on the cluster returns them), else the hdfs:// path of its JSON file."""
    from kmeans_ops.paths import filesystem
    from kmeans_ops.publish import final_dir, staging_dir
    from kmeans_ops.storage import json_bytes

    staging, final = staging_dir(run["output"], run["key"]), final_dir(run["output"], run["key"])
    fs = filesystem(staging)
    with open(os.path.join(local, stem + ".json"), encoding="utf-8") as handle:
        figures = {**json.load(handle), "output": fs.join(final, stem + ".png")}
    fs.upload(os.path.join(local, stem + ".png"), fs.join(staging, stem + ".png"))
    fs.write_bytes(fs.join(staging, stem + ".json"), json_bytes(figures))
    found = {"figures": figures} if stem == "china" else {"json": fs.join(staging, stem + ".json")}
    return {"ok": True, "stem": stem, "seconds": seconds, **found}


@dag(dag_id="kmeans_ui_publish", schedule=None, params={
    "input": Param([], type="array"), "output": Param("", type="string"), "how": Param("ok", type="string"),
    "k": Param(4, type="integer"), "max_iterations": Param(10, type="integer"), "delta": Param(1.0, type="number"),
    "init": Param("kmeans++", type="string"), "seed": Param(0, type="integer"), "engine": Param("local", type="string"),
    "batch_size": Param(64, type="integer")})
def kmeans_ui_publish():
    @task
    def prepare(**context) -> dict:
        from kmeans_ops.run import plan

        run = plan(dict(context["params"]), context["run_id"], context["dag"].dag_id)
        return {**run, "failures": [], "timeline": [["prepare", time.time()]]}

    @task
    def images(run: dict) -> list[list[str]]:
        return [[image["path"]] for image in run["images"]]

    @task
    def quantize(paths: list[str], run: dict, **context) -> list[dict]:
        from kmeans_ops.cli import main
        from kmeans_ops.publish import final_dir, staging_dir

        stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        if context["params"]["how"] == "fail":
            return [{"ok": False, "stage": "reconstruct", "source": s, "error": f"{s}: made to fail"} for s in stems]
        if context["params"]["how"] == "squat":
            os.makedirs(final_dir(run["output"], run["key"]), exist_ok=True)
        staging = staging_dir(run["output"], run["key"])
        hdfs = context["params"]["how"] == "hdfs"
        local = tempfile.mkdtemp() if hdfs else staging
        started = time.perf_counter()
        status = main(["quantize", *paths, "-k", str(run["params"]["k"]), "--out", local, "-q"])
        assert status == 0, status
        seconds = time.perf_counter() - started
        if hdfs:
            try:
                return [uploaded(local, s, run, seconds) for s in stems]
            finally:
                shutil.rmtree(local)
        return [{"ok": True, "stem": s, "json": os.path.join(staging, s + ".json"), "seconds": seconds} for s in stems]

    run = prepare()
    PublishOperator(task_id="publish", plan=run, results=quantize.partial(run=run).expand(paths=images(run)),
                    outlets=[RESULTS])


kmeans_ui_publish()
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def airflow(env: dict, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the Airflow CLI of this venv; with ``check``, a failure names the command and its output's end."""
    done = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args[:2])} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return done


class Site:
    """The running API server and what the runs left."""

    def __init__(self, port: int, env: dict, tmp, roots: list[str]):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.env = env
        self.tmp = tmp
        self.roots = roots  # the allowed roots the runs had: the photos, the output folder
        self.token: str | None = None
        self.password: str | None = None
        self.runs: dict[str, str] = {}  # "real", "ok", "fail", "squat" -> run id
        self.logs: dict[str, str] = {}  # the same -> output of `airflow dags test`

    def request(self, path: str, *, token: str | None = "default", cookie: str | None = None, method: str = "GET",
                body: dict | None = None) -> tuple[int, dict, bytes]:
        """(status, headers with lower-case names, body); ``path`` is sent exactly as given."""
        headers = {}
        token = self.token if token == "default" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            headers["Cookie"] = f"_token={cookie}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        status, _, data = self.request(path, method=method, body=body)
        assert status == 200, (path, status, data[:500])
        return json.loads(data)

    def run_url(self, dag_id: str, run: str, name: str = "report.html") -> str:
        return f"/kmeans/runs/{dag_id}/{quote(run, safe='')}/{name}"

    def folder(self, dag_id: str, run: str) -> str:
        """What the run's publish task returned, read through the REST API."""
        entry = self.api(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run, safe='')}/taskInstances/publish/"
                         f"xcomEntries/return_value")
        return entry["value"]

    def publish_state(self, dag_id: str, run: str) -> str:
        return self.api(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run, safe='')}/taskInstances/publish")["state"]

    def set_roots(self, roots: list[str]) -> None:
        self.api("/api/v2/variables/kmeans_allowed_roots", "PATCH",
                 {"key": "kmeans_allowed_roots", "value": json.dumps(roots)})


def write_small_photos(folder) -> None:
    """Two real photographs, scaled down to 96 pixels on their long side (a fast run)."""
    os.makedirs(folder, exist_ok=True)
    for name in ("china", "coffee"):
        image = photo_bgr(name)
        h, w = image.shape[:2]
        scale = 96 / max(h, w)
        cv2.imwrite(os.path.join(folder, f"{name}.png"),
                    cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA))


def wait_healthy(site: Site, server: subprocess.Popen, log_path: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"airflow api-server exited {server.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            status, _, _ = site.request("/api/v2/monitor/health", token=None)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"airflow api-server not healthy after {seconds:.0f} s:\n{open(log_path).read()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL if it does not stop."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def prepare_site(tmp, test_dag: str, test_dag_source: str, extra_env: dict | None = None) -> tuple[str, str, dict]:
    """A site's folders and environment in ``tmp``: AIRFLOW_HOME, a dags folder holding the real
    DAG (this checkout's file, linked) and the test DAG ``test_dag`` (its source written), two small
    photos; the environment of the Airflow CLI and server (this checkout's plugin), with
    ``extra_env``. Returns (home, photos folder, environment)."""
    home, dags, photos = (str(tmp / name) for name in ("home", "dags", "photos"))
    os.makedirs(dags)
    write_small_photos(photos)
    os.symlink(os.path.join(ROOT, "dags", f"{DAG}.py"), os.path.join(dags, f"{DAG}.py"))
    with open(os.path.join(dags, f"{test_dag}.py"), "w", encoding="utf-8") as handle:
        handle.write(test_dag_source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KMEANS_", "PYTEST_AIRFLOW"))}
    env.update({
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__DAGS_FOLDER": dags,
        "AIRFLOW__CORE__PLUGINS_FOLDER": os.path.join(home, "plugins"),  # the plugin: the package's entry point
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "KMEANS_HOME": home,
        "PYTHONPATH": ROOT,
        **(extra_env or {}),
    })
    return home, photos, env


@contextmanager
def serving(site: Site, home: str):
    """``airflow api-server`` on the site's port, in its own process group, healthy and logged in
    as admin (``site.password``, ``site.token``); stopped with its workers at the end."""
    log_path = os.path.join(home, "api-server.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen([AIRFLOW, "api-server", "--port", str(site.port)], env=site.env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(site, server, log_path)
        with open(os.path.join(home, "simple_auth_manager_passwords.json.generated"), encoding="utf-8") as handle:
            site.password = json.load(handle)["admin"]
        status, _, data = site.request("/auth/token", token=None, method="POST",
                                       body={"username": "admin", "password": site.password})
        assert status in (200, 201), (status, data[:300])
        site.token = json.loads(data)["access_token"]
        yield site
    finally:
        stop(server)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    home, photos, env = prepare_site(tmp, TEST_DAG, TEST_DAG_SOURCE)
    out = str(tmp / "out")
    os.makedirs(out)
    site = Site(free_port(), env, tmp, [photos, out])
    airflow(env, "db", "migrate")
    airflow(env, "variables", "set", "kmeans_allowed_roots", json.dumps(site.roots))

    conf = {"input": [photos], "output": out}
    site.logs["real"] = airflow(env, "dags", "test", DAG, "-c", json.dumps({**conf, "k": 4})).stdout
    site.logs["ok"] = airflow(env, "dags", "test", TEST_DAG, "-c", json.dumps(conf)).stdout
    for how in ("fail", "squat"):  # publish fails: the run fails
        done = airflow(env, "dags", "test", TEST_DAG, "-c", json.dumps({**conf, "how": how}), check=False)
        site.logs[how] = done.stdout + done.stderr

    with serving(site, home):
        (site.runs["real"],) = [r["dag_run_id"] for r in site.api(f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]]
        for r in site.api(f"/api/v2/dags/{TEST_DAG}/dagRuns")["dag_runs"]:
            site.runs[r["conf"].get("how", "ok")] = r["dag_run_id"]
        yield site


def published_files(folder: str) -> list[str]:
    """report.html and each image's PNG and JSON, named from summary.json."""
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as handle:
        images = json.load(handle)["images"]
    stems = [os.path.splitext(os.path.basename(image["output"]))[0] for image in images]
    return ["report.html"] + [stem + ext for stem in stems for ext in (".png", ".json")]


def test_report_urls_are_same_origin_paths_under_the_api_base_url():
    from kmeans_plugin.links import api_root_path, run_file_url

    run = "manual__2026-11-28T02:12:00+00:00"
    assert run_file_url(DAG, run, "report.html", api_root_path("")) == (
        f"/kmeans/runs/{DAG}/manual__2026-11-28T02%3A12%3A00%2B00%3A00/report.html")
    assert run_file_url(DAG, "a/b", "x.png", api_root_path("https://example.org/airflow")) == (
        f"/airflow/kmeans/runs/{DAG}/a%2Fb/x.png")


def test_the_api_server_loads_the_plugin_app_and_view(site):
    (plugin,) = [p for p in site.api("/api/v2/plugins")["plugins"] if p["name"] == "kmeans"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/kmeans"]
    (view,) = plugin["external_views"]
    assert (view["name"], view["href"], view["destination"], view["url_route"]) == (
        "K-means results", "/kmeans/results", "nav", "kmeans-results")
    assert any("ReportLink" in link for link in plugin["operator_extra_links"])


def test_a_logged_in_user_gets_the_report_images_and_json_of_a_real_run(site):
    run = site.runs["real"]
    folder = site.folder(DAG, run)
    names = published_files(folder)
    assert sum(name.endswith(".png") for name in names) == 2
    types = {".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json"}
    for name in names:
        status, headers, body = site.request(site.run_url(DAG, run, name))
        assert status == 200, (name, status, body[:300])
        with open(os.path.join(folder, name), "rb") as handle:
            assert body == handle.read(), name
        assert headers["content-type"] == types[os.path.splitext(name)[1]], name
        assert headers["x-content-type-options"] == "nosniff"
    _, headers, _ = site.request(site.run_url(DAG, run))
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none': no script runs
    assert "default-src 'none'" in headers["content-security-policy"]
    # the UI's way: its token cookie, no Authorization header
    status, _, body = site.request(site.run_url(DAG, run), token=None, cookie=site.token)
    assert status == 200 and body.startswith(b"<!DOCTYPE html>")
    status, headers, _ = site.request(site.run_url(DAG, run, ""))
    assert (status, headers["location"]) == (307, "report.html")


def test_no_or_bad_credentials_are_refused(site):
    run = site.runs["real"]
    paths = [site.run_url(DAG, run), site.run_url(DAG, run, "china.png"), site.run_url(DAG, run, ""),
             site.run_url(DAG, "no-such-run"), "/kmeans/results"]
    for path in paths:
        status, _, body = site.request(path, token=None)
        assert status == 401, (path, status)
        assert b"<html" not in body and b"PNG" not in body
        for token, cookie in (("not-a-token", None), (None, "not-a-token"), (site.token[:-4] + "AAAA", None)):
            status, _, body = site.request(path, token=token, cookie=cookie)
            assert status in (401, 403), (path, token, cookie, status)
            assert b"<html" not in body and b"PNG" not in body


def test_names_that_leave_the_run_folder_are_404(site):
    run = site.runs["real"]
    folder = site.folder(DAG, run)
    other = site.folder(TEST_DAG, site.runs["ok"])  # another published run, beside this one
    secret = os.path.join(site.tmp, "out", "secret.json")  # under an allowed root, outside the run folder
    secret_png = os.path.join(site.tmp, "secret.png")  # outside every root
    planted = {os.path.join(folder, "leak.json"): secret, os.path.join(folder, "leak.png"): secret_png}
    extra = [os.path.join(folder, ".hidden.json"), os.path.join(folder, "notes.txt")]
    for path in (secret, secret_png):
        with open(path, "w") as handle:
            handle.write('{"secret": true}')
    try:
        for link, target in planted.items():
            os.symlink(target, link)
        for path in extra:
            with open(path, "w") as handle:
                handle.write("{}")
        key = os.path.basename(other)
        assert os.path.isfile(os.path.join(other, "report.html")) and os.path.isfile(secret)
        names = [
            f"../{key}/report.html", f"%2e%2e/{key}/report.html", f"%2e%2e%2f{key}%2freport.html",
            f"..%2F{key}%2Freport.html", "../secret.json", "%2e%2e%2fsecret.json", "..%2f..%2fout%2fsecret.json",
            "/" + secret.lstrip("/"), "%2f" + quote(secret.lstrip("/"), safe=""), quote(secret, safe=""),
            "..", "%2e%2e", ".", "summary.json%00.png", "leak.json", "leak.png", ".hidden.json", "notes.txt",
            "no-such.png", "report.html/",
        ]
        for name in names:
            path = f"/kmeans/runs/{DAG}/{quote(run, safe='')}/{name}"
            status, _, body = site.request(path)
            assert status == 404, (name, status, body[:200])
            assert b"secret" not in body and b"<html" not in body
        assert site.request(site.run_url(DAG, run))[0] == 200  # the same request, a name inside: served
    finally:
        for path in [*planted, *extra, secret, secret_png]:
            if os.path.lexists(path):
                os.unlink(path)


def test_a_run_outside_the_allowed_roots_or_no_longer_published_is_not_served(site):
    from kmeans_ops.publish import is_published

    run = site.runs["real"]
    folder = site.folder(DAG, run)
    assert is_published(folder)
    site.set_roots([site.roots[0]])  # the photos only: the output folder is now outside
    try:
        for name in ("report.html", "china.png", "summary.json"):
            status, _, body = site.request(site.run_url(DAG, run, name))
            assert status == 404, (name, status)
            assert b"<html" not in body
        status, _, page = site.request("/kmeans/results")
        assert status == 200 and run.encode() in page
        assert b'class="report"' not in page and b"not available" in page
    finally:
        site.set_roots(site.roots)
    assert site.request(site.run_url(DAG, run))[0] == 200
    marker = os.path.join(folder, "summary.json")  # without it the folder is no longer a published run
    os.rename(marker, marker + ".away")
    try:
        assert site.request(site.run_url(DAG, run))[0] == 404
    finally:
        os.rename(marker + ".away", marker)
    assert site.request(site.run_url(DAG, run))[0] == 200


def test_an_xcom_editor_cannot_repoint_a_run_to_another_runs_folder(site):
    """Someone who may edit XComs patches the "ok" run's publish value to the "real" run's folder
    (through the REST API, which accepts it): the app serves nothing for "ok", and the "real" run's
    report is still served for "real" only."""
    ok, real = site.runs["ok"], site.runs["real"]
    own, other = site.folder(TEST_DAG, ok), site.folder(DAG, real)
    assert site.request(site.run_url(TEST_DAG, ok))[0] == 200
    path = (f"/api/v2/dags/{TEST_DAG}/dagRuns/{quote(ok, safe='')}/taskInstances/publish/xcomEntries/"
            f"return_value")
    site.api(path, "PATCH", {"value": other, "map_index": -1})
    try:
        assert site.folder(TEST_DAG, ok) == other  # the edit took
        for name in ("report.html", "summary.json"):
            status, _, body = site.request(site.run_url(TEST_DAG, ok, name))
            assert status == 404 and b"<html" not in body, (name, status)
        assert site.request(site.run_url(DAG, real))[0] == 200
    finally:
        site.api(path, "PATCH", {"value": own, "map_index": -1})
    assert site.request(site.run_url(TEST_DAG, ok))[0] == 200


def test_the_results_page_lists_the_run_and_links_to_its_report(site):
    run = site.runs["real"]
    status, headers, page = site.request("/kmeans/results")
    assert status == 200 and headers["content-type"].startswith("text/html")
    text = page.decode()
    rows = re.findall(r'<tr class="run">(.*?)</tr>', text, re.S)
    assert len(rows) == 1, rows  # only kmeans_image_clustering's runs, not the test DAG's
    (row,) = rows
    assert f"<code>{run}</code>" in row
    assert re.search(r'<td class="num images">2</td>', row)
    (href,) = re.findall(r'<a class="report" href="([^"]+)"', row)
    assert href == f"runs/{DAG}/{quote(run, safe='')}/report.html"
    status, _, body = site.request(urljoin("/kmeans/results", href))
    with open(os.path.join(site.folder(DAG, run), "report.html"), "rb") as handle:
        assert status == 200 and body == handle.read()


def test_publish_operator_publishes_links_its_report_and_sets_the_asset_event(site):
    run = site.runs["ok"]
    assert site.publish_state(TEST_DAG, run) == "success"
    folder = site.folder(TEST_DAG, run)
    links = site.api(f"/api/v2/dags/{TEST_DAG}/dagRuns/{quote(run, safe='')}/taskInstances/publish/links")
    assert links["extra_links"] == {"Report": site.run_url(TEST_DAG, run)}
    status, _, body = site.request(links["extra_links"]["Report"])
    with open(os.path.join(folder, "report.html"), "rb") as handle:
        assert status == 200 and body == handle.read()
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert len(summary["images"]) == 2 and summary["failures"] == []  # two mapped tasks' lists, flattened
    assert (summary["run"]["dag_id"], summary["run"]["run_id"]) == (TEST_DAG, run)
    assert summary["run"]["wall_seconds"] > 0
    # the time per stage from the run's task instances: one stage per task of the test DAG, with
    # its waiting and running
    stages = summary["run"]["stages"]
    assert [stage[0] for stage in stages] == ["prepare", "images", "quantize", "publish"]
    assert all(len(stage) == 4 and stage[2] >= 0 and stage[3] > 0 for stage in stages), stages
    events = site.api(f"/api/v2/assets/events?source_dag_id={TEST_DAG}&source_run_id={quote(run, safe='')}")
    assert [e["extra"] for e in events["asset_events"]] == [{"folder": folder, "run_id": run}]


def test_publish_operator_fails_after_publishing_when_no_image_was_reconstructed(site):
    from kmeans_ops.publish import final_dir, is_published
    from kmeans_ops.run import run_key

    run = site.runs["fail"]
    assert site.publish_state(TEST_DAG, run) == "failed"
    assert "no image could be reconstructed: china: made to fail; coffee: made to fail" in site.logs["fail"]
    folder = final_dir(os.path.join(site.tmp, "out"), run_key(run))
    assert is_published(folder)  # the report of the failures is published all the same
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert (len(summary["images"]), len(summary["failures"])) == (0, 2)
    links = site.api(f"/api/v2/dags/{TEST_DAG}/dagRuns/{quote(run, safe='')}/taskInstances/publish/links")
    assert not links["extra_links"].get("Report")  # no link from a failed publish
    assert site.request(site.run_url(TEST_DAG, run))[0] == 404


def test_publish_operator_never_replaces_a_folder_that_is_not_a_published_run(site):
    from kmeans_ops.publish import final_dir, staging_dir
    from kmeans_ops.run import run_key

    run = site.runs["squat"]
    assert site.publish_state(TEST_DAG, run) == "failed"
    out = os.path.join(site.tmp, "out")
    folder = final_dir(out, run_key(run))
    assert "exists and is not a published run" in site.logs["squat"]
    assert os.listdir(folder) == []  # the squatter's folder, untouched
    staged = set(os.listdir(staging_dir(out, run_key(run))))  # the run's files stay where they were written
    assert {"china.json", "china.png", "coffee.json", "coffee.png", "report.html"} <= staged
    assert site.request(site.run_url(TEST_DAG, run))[0] == 404


def test_publish_operator_run_again_on_a_published_run_publishes_nothing_again(site):
    run = site.runs["ok"]
    folder = site.folder(TEST_DAG, run)
    report = os.path.join(folder, "report.html")
    before = (os.stat(report).st_mtime_ns, open(report, "rb").read())
    done = airflow(site.env, "tasks", "test", TEST_DAG, "publish", run)
    assert f"already published: {folder}" in done.stdout + done.stderr
    assert (os.stat(report).st_mtime_ns, open(report, "rb").read()) == before
    assert site.folder(TEST_DAG, run) == folder
    assert site.request(site.run_url(TEST_DAG, run))[0] == 200


def test_in_a_browser_the_report_link_and_the_results_page(site, tmp_path_factory):
    """Chromium (Debian's, driven by Playwright): log in, open the publish task, follow its Report
    link, see the report; open K-means results from the navigation and a report from there."""
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is not installed (bin/setup-system installs it)"
    shots = tmp_path_factory.mktemp("screenshots")
    run, real = site.runs["ok"], site.runs["real"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            anonymous = browser.new_page()
            response = anonymous.goto(site.base + site.run_url(TEST_DAG, run))
            assert response.status == 401
            expect(anonymous.locator("h1")).to_have_count(0)

            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.goto(site.base + "/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(site.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)

            page.goto(f"{site.base}/dags/{TEST_DAG}/runs/{quote(run, safe='')}/tasks/publish")
            page.get_by_text("Details", exact=True).click()
            link = page.get_by_role("link", name="Report")
            expect(link).to_be_visible(timeout=30_000)
            assert link.get_attribute("href") == site.run_url(TEST_DAG, run)
            page.screenshot(path=str(shots / "1-publish-task.png"))
            link.click()
            page.wait_for_url(f"**{site.run_url(TEST_DAG, run)}")
            expect(page.locator("h1")).to_have_text("K-means colour quantisation report")
            expect(page.get_by_text(run).first).to_be_visible()
            expect(page.get_by_text("china.png").first).to_be_visible()
            page.screenshot(path=str(shots / "2-report.png"))

            page.goto(site.base + "/")
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="K-means results").click()
            expect(page).to_have_url(re.compile(r"/plugin/kmeans-results"))  # the view, inside the UI
            frame = page.frame_locator("iframe")
            expect(frame.locator("h1")).to_have_text("K-means results")
            expect(frame.locator("tr.run")).to_have_count(1)
            expect(frame.locator("tr.run code")).to_have_text(real)
            page.screenshot(path=str(shots / "3-results-page.png"))
            frame.locator("a.report").click()
            expect(frame.locator("h1")).to_have_text("K-means colour quantisation report")
            expect(frame.get_by_text(real).first).to_be_visible()
            page.screenshot(path=str(shots / "4-report-in-results-page.png"))
        finally:
            browser.close()
    print(f"screenshots: {shots}")
