"""Deferrable waiting on the real dev cluster: the trigger alone against a real YARN application,
the DAG under the real scheduler with a triggerer (``bin/airflow standalone``, deferrable on), and
a job killed on YARN while its task is deferred."""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import quote

import cv2
import pytest

from conftest import ROOT, photo_bgr, run_cli
from kmeans_ops import params as P
from kmeans_ops.ingest import ingest
from kmeans_ops.workarea import WorkArea
from test_hadoop import hadoop, hdfs  # noqa: F401 - the cluster fixture
from test_standalone import Standalone, request

DAG = "kmeans_image_clustering"
ITERATION = "iteration_01.mapreduce"


def first_event(trigger, ticks: list | None = None):
    """Run the trigger's async generator to its first event (as the triggerer does); with ``ticks``,
    a ticker beside it records the event loop's largest stall."""

    async def main():
        async def ticker():
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                ticks.append(now - last)
                last = now

        beside = asyncio.ensure_future(ticker()) if ticks is not None else None
        try:
            async for event in trigger.run():
                return event
        finally:
            if beside:
                beside.cancel()

    return asyncio.run(main())


@pytest.fixture()
def staged_job(hadoop):  # noqa: F811
    """A small iteration job submitted to YARN (returns at once): (engine, job, area)."""
    from kmeans_ops.engines.hadoop import HadoopEngine

    params = P.validate(k=3, max_iter=1)
    local = WorkArea(tempfile.mkdtemp())
    cv2.imwrite(os.path.join(local.root, "coffee.png"), photo_bgr("coffee")[::4, ::4])
    ingest(os.path.join(local.root, "coffee.png"), "coffee", local, params)
    engine = HadoopEngine(framework="yarn")
    area = engine.stage(local, f"test-trigger-{uuid.uuid4().hex[:8]}")
    try:
        yield engine, engine.submit("iterate", area=area, image_ids=["coffee"], iteration=1, delta=1.0), area
    finally:
        engine.discard(area)


def test_trigger_follows_a_real_yarn_application(staged_job, capfd):
    """The trigger polls the ResourceManager without blocking the event loop, logs progress lines,
    fires one event with the final state; the job is then collected as after engine.wait. Run
    again (a triggerer failover), it fires the same event."""
    from kmeans_plugin.triggers import YarnApplicationTrigger

    engine, job, area = staged_job
    assert "final" not in job and job["application_id"].startswith("application_")
    trigger = YarnApplicationTrigger.for_job(job, engine.timeout)
    classpath, kwargs = trigger.serialize()
    assert classpath == "kmeans_plugin.triggers.YarnApplicationTrigger"
    json.dumps(kwargs)  # what the triggerer stores
    revived = YarnApplicationTrigger(**kwargs)  # as the triggerer re-creates it
    ticks = []
    capfd.readouterr()
    event = first_event(revived, ticks)
    final = event.payload["final"]
    assert (final["state"], final["finalStatus"]) == ("FINISHED", "SUCCEEDED"), final
    assert event.payload["application_id"] == job["application_id"]
    lines = [line for line in capfd.readouterr().out.splitlines() if job["application_id"] in line]  # the log
    assert any("accepted" in line or "running" in line for line in lines), lines
    assert any("FINISHED/SUCCEEDED after" in line for line in lines), lines
    assert max(ticks) < 0.5, f"the event loop stalled {max(ticks):.2f} s"
    again = first_event(YarnApplicationTrigger(**kwargs))  # idempotent: the same event
    assert again.payload == event.payload
    figures = engine.collect({**job, "final": final})
    assert figures["coffee"]["iteration"] == 1 and engine.hdfs.exists(area.clusters("coffee", 1))


def test_trigger_holds_back_a_job_that_ended_at_once_without_success(staged_job):
    """A job killed as soon as it is submitted: the trigger reports KILLED, but no sooner than its
    settle time after it started (apache/airflow#72716: a task resumed within a second or two of
    its deferral can be failed by the scheduler as "state changed externally")."""
    from kmeans_plugin.triggers import YarnApplicationTrigger
    from kmeans_ops.engines import yarn

    engine, job, area = staged_job
    yarn.kill(job["rm"], job["application_id"])
    trigger = YarnApplicationTrigger(**{**YarnApplicationTrigger.for_job(job, engine.timeout).serialize()[1],
                                        "settle_seconds": 3})
    started = time.monotonic()
    event = first_event(trigger)
    assert event.payload["final"]["state"] == "KILLED", event.payload
    assert time.monotonic() - started >= 3


def test_trigger_gives_up_on_an_unreachable_resource_manager(hadoop):  # noqa: F811
    """A few failed polls are tolerated (the RM restarting), then one error event naming the RM
    and the application; an application the RM does not know, the same."""
    from kmeans_plugin.triggers import YarnApplicationTrigger

    event = first_event(YarnApplicationTrigger(rm="http://127.0.0.1:8088", application_id="application_1_0001",
                                               what="iteration 1", poll_seconds=0.01, max_misses=1))
    assert event.payload["error"] == ("iteration 1: the ResourceManager http://127.0.0.1:8088 does not know "
                                      "application_1_0001 (HTTP 404)")

    started = time.monotonic()
    event = first_event(YarnApplicationTrigger(rm="http://127.0.0.1:9", application_id="application_1_0001",
                                               what="iteration 1", poll_seconds=0.01, max_misses=2))
    assert "final" not in event.payload and time.monotonic() - started < 10
    assert event.payload["error"].startswith("iteration 1: the ResourceManager http://127.0.0.1:9 stopped answering "
                                             "about application_1_0001")
    assert "\n" not in event.payload["error"]


def test_trigger_module_imports_from_sys_path_alone():
    """The triggerer imports the trigger by its class path, with the plugins folder and the
    repository on sys.path (docker-compose: /opt/airflow/plugins and PYTHONPATH) and no DAG: it
    imports nothing heavy."""
    code = ("import sys, kmeans_plugin.triggers as t\n"
            "assert t.YarnApplicationTrigger\n"
            "heavy = [m for m in ('cv2', 'numpy', 'kmeans_ops.mapreduce', 'requests') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.path.join(ROOT, 'plugins')}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]


def test_compose_defers_and_runs_a_triggerer():
    """docker-compose.yaml: every Airflow service defers by default (the scheduler runs the tasks),
    and the triggerer runs the same image, which has the project installed (the trigger's module
    comes from the package, as the operators do)."""
    import yaml

    services = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yaml")))["services"]
    triggerer = services["airflow-triggerer"]
    assert triggerer["command"] == "triggerer"
    assert triggerer["image"] == services["airflow-scheduler"]["image"]
    for name, service in services.items():
        if name.startswith("airflow-"):
            assert service["environment"]["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "True", name


# ------------------------------------------------------------------ under the real scheduler
@pytest.fixture(scope="module")
def server(hadoop, tmp_path_factory):  # noqa: F811
    """`bin/airflow standalone` (scheduler, triggerer, ...) with deferrable operators by default
    (AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE), allowed to read this module's folders and HDFS."""
    tmp = tmp_path_factory.mktemp("deferrable")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
        patch.setenv("KMEANS_YARN_PROGRESS_S", "2")
        standalone = Standalone(tmp, [str(tmp), "hdfs:///"])
    try:
        token = standalone.token()
        standalone.unpause(token, DAG)
        yield standalone, token, tmp
    finally:
        standalone.kill()


class Run:
    """A run of the DAG triggered through the REST API, watched until it ends: every state each
    task instance was seen in (polled twice a second)."""

    def __init__(self, server, token, conf: dict):
        self.server, self.token = server, token
        run = request(f"{server.api}/api/v2/dags/{DAG}/dagRuns", token, {"logical_date": None, "conf": conf})
        self.run_id = run["dag_run_id"]
        self.url = f"{server.api}/api/v2/dags/{DAG}/dagRuns/{quote(self.run_id, safe='')}"
        self.seen: dict[tuple[str, int], set] = {}
        self.started = time.time()

    def poll(self) -> dict:
        tis = request(f"{self.url}/taskInstances?limit=1000", self.token)["task_instances"]
        for ti in tis:
            self.seen.setdefault((ti["task_id"], ti["map_index"]), set()).add(ti["state"])
        return {(ti["task_id"], ti["map_index"]): ti for ti in tis}

    def wait(self, timeout: float = 900, each=None) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            tis = self.poll()
            if each:
                each(tis)
            state = request(self.url, self.token)["state"]
            if state in ("success", "failed"):
                self.seconds = time.time() - self.started
                return request(self.url, self.token)
            time.sleep(0.5)
        raise AssertionError(f"the run did not end in {timeout:.0f} s: {self.seen}")

    def log(self, task_id: str, map_index: int, try_number: int) -> str:
        """The try's whole log (the worker's lines and the triggerer's), one line per event."""
        url = f"{self.url}/taskInstances/{task_id}/logs/{try_number}?map_index={map_index}&full_content=true"
        content = request(url, self.token)["content"]
        return "\n".join(json.dumps(c) if not isinstance(c, str) else c for c in content)

    def xcom(self, task_id: str, map_index: int, key: str):
        url = f"{self.url}/taskInstances/{task_id}/xcomEntries/{key}?map_index={map_index}"
        return request(url, self.token)["value"]


def hdfs_photos(names: list[str], scale: int = 4) -> tuple[str, str]:
    """The photos written to a fresh HDFS folder: (its path, its hdfs:// URI)."""
    client = hdfs()
    remote = f"{client.home()}/test-deferrable-{uuid.uuid4().hex[:8]}"
    client.makedirs(remote)
    for name in names:
        client.write_bytes(f"{remote}/{name}.png", cv2.imencode(".png", photo_bgr(name)[::scale, ::scale])[1].tobytes())
    return remote, f"hdfs://127.0.0.1:8020{remote}"


def test_dag_defers_on_yarn_under_the_scheduler_and_equals_the_local_engine(server):
    """engine=hadoop, images in HDFS, an hdfs:// output, deferrable: the ingest job and the
    reconstruction job (both on the cluster) and each iteration's job are waited for in the
    triggerer (the task instances go through "deferred"), the triggerer's progress lines are in
    the task's log, and the run publishes into HDFS the centroids of the embedded engine on the
    same images."""
    from kmeans_ops.run import run_key

    standalone, token, tmp = server
    names = ["coffee", "rocket"]
    remote, uri = hdfs_photos(names)
    conf = {"input": [uri], "engine": "hadoop", "k": 4, "max_iterations": 2, "seed": 3, "delta": 0,
            "output": f"{uri}-out"}
    try:
        run = Run(standalone, token, conf)
        final = run.wait()
        assert final["state"] == "success", run.seen
        for task_id in ("ingest", ITERATION, "iteration_02.mapreduce", "reconstruct"):
            assert run.seen[(task_id, 0)] >= {"deferred", "success"}, (task_id, run.seen[(task_id, 0)])
        application = run.xcom(ITERATION, 0, "kmeans_yarn_url").rstrip("/").rsplit("/", 1)[-1]
        assert application.startswith("application_")
        finished = f"iteration 1: {application} FINISHED/SUCCEEDED after"  # the triggerer's last line
        for _ in range(30):  # the triggerer's part of the log may reach the log server a little later
            log = run.log(ITERATION, 0, 1)
            if finished in log:
                break
            time.sleep(2)
        assert "the task defers while YARN runs it" in log  # the worker, before deferring
        # The triggerer logs each state it sees: accepted/running unless the job was over by its
        # first poll (a loaded machine), then the final state.
        assert finished in log, log[-3000:]
        assert "largest shift" in log  # the worker again, resumed
        for task_id in ("ingest", "reconstruct"):
            stage_log = run.log(task_id, 0, 1)
            assert "on the cluster" in stage_log and "FINISHED/SUCCEEDED" in stage_log, task_id
        # the same centroids as the embedded engine on the same images
        local_in = tmp / "local-in"
        local_in.mkdir()
        for name in names:
            (local_in / f"{name}.png").write_bytes(hdfs().read_bytes(f"{remote}/{name}.png"))
        status, err = run_cli("quantize", local_in, "-k", 4, "--max-iter", 2, "--seed", 3, "--delta", 0,
                              "--out", tmp / "cli", "-q")
        assert status == 0, err
        folder = f"{remote}-out/{run_key(run.run_id)}"
        assert hdfs().read_bytes(f"{remote}-out/latest") == f"{run_key(run.run_id)}\n".encode()
        for name in names:
            ours = json.loads(hdfs().read_bytes(f"{folder}/{name}.json"))
            reference = json.load(open(tmp / "cli" / f"{name}.json"))
            assert ours["engine"] == "hadoop" and ours["source"].startswith("hdfs://")
            assert ours["centroids_rgb"] == reference["centroids_rgb"] and ours["iterations"] == 2
            assert hdfs().exists(f"{folder}/{name}.png")
        print(f"\ndeferrable run with engine hadoop: {run.seconds:.1f} s")
    finally:
        hdfs().delete(remote)
        hdfs().delete(f"{remote}-out")


def test_job_killed_on_yarn_while_deferred_fails_the_task_then_the_run(server):
    """Each try of iteration 1's job is killed through the ResourceManager's REST API while its
    task is deferred: the try fails with one line naming the application (not run again by the
    engine), and after the task's retries the run fails with nothing published."""
    standalone, token, tmp = server
    images = tmp / "in-kill"
    images.mkdir()
    for name in ("coffee", "chelsea"):
        cv2.imwrite(str(images / f"{name}.png"), photo_bgr(name)[::4, ::4])
    out = tmp / "out-killed"
    run = Run(standalone, token, {"input": [str(images)], "engine": "hadoop", "k": 4, "max_iterations": 3,
                                  "output": str(out)})
    killed: dict[int, str] = {}  # try number -> application

    def kill_when_deferred(tis):
        ti = tis.get((ITERATION, 0))
        if not ti or ti["state"] != "deferred" or ti["try_number"] in killed:
            return
        url = run.xcom(ITERATION, 0, "kmeans_yarn_url")
        application = url.rstrip("/").rsplit("/", 1)[-1]
        if application in killed.values():
            return  # the XCom of the earlier try: this one's is not pushed yet
        rm = "http://127.0.0.1:8088"
        request(f"{rm}/ws/v1/cluster/apps/{application}/state", body={"state": "KILLED"}, method="PUT")
        killed[ti["try_number"]] = application

    final = run.wait(each=kill_when_deferred)
    assert final["state"] == "failed"
    ti = run.poll()[(ITERATION, 0)]
    assert ti["state"] == "failed" and ti["try_number"] == 3 and sorted(killed) == [1, 2, 3], (ti, killed)
    for try_number, application in killed.items():
        app = request(f"http://127.0.0.1:8088/ws/v1/cluster/apps/{application}")["app"]
        assert app["state"] == "KILLED"
        for _ in range(30 if try_number == 3 else 3):  # the resumed part of a log may come a little later
            log = run.log(ITERATION, 0, try_number)
            errors = [line for line in log.splitlines() if "Hadoop Streaming job failed" in line]
            if errors:
                break
            time.sleep(2)
        # An earlier try's resumed process may be stopped by Airflow before it logs (seen on a loaded
        # machine: "Task Instance not found, it may have been moved to the Task Instance History
        # table" once the next try is on its way); the last try's log always has the error line.
        assert errors or try_number < 3, log[-3000:]
        for line in errors:
            message = json.loads(line).get("error_detail", [{}])[0].get("exc_value", "") or line
            assert application in message and "KILLED" in message and "\n" not in message, message
    assert not out.exists() or os.listdir(out) == []  # nothing published, not even a staging folder
    print(f"\nrun with a job killed at each of 3 tries: {run.seconds:.1f} s")


def test_deferred_task_marked_failed_kills_its_application(server):
    """A person marks a deferred iteration task failed (REST API, as the UI does) once the
    triggerer follows its job: the triggerer cancels the trigger, whose on_kill kills the YARN
    application; the run fails."""
    standalone, token, tmp = server
    images = tmp / "in-marked"
    images.mkdir()
    cv2.imwrite(str(images / "rocket.png"), photo_bgr("rocket")[::4, ::4])
    run = Run(standalone, token, {"input": [str(images)], "engine": "hadoop", "k": 3, "max_iterations": 2,
                                  "output": str(tmp / "out-marked")})
    marked = []

    def mark_failed_when_followed(tis):
        ti = tis.get((ITERATION, 0))
        if marked or not ti or ti["state"] != "deferred":
            return
        application = run.xcom(ITERATION, 0, "kmeans_yarn_url").rstrip("/").rsplit("/", 1)[-1]
        log = run.log(ITERATION, 0, 1)
        if f"{application} accepted" not in log and f"{application} running" not in log:
            return  # the triggerer has not started the trigger yet
        marked.append(application)
        request(f"{run.url}/taskInstances/{ITERATION}/0", token, {"new_state": "failed"}, "PATCH")

    final = run.wait(each=mark_failed_when_followed)
    assert final["state"] == "failed" and marked
    deadline = time.time() + 60
    while time.time() < deadline:
        app = request(f"http://127.0.0.1:8088/ws/v1/cluster/apps/{marked[0]}")["app"]
        if app["state"] in ("FINISHED", "FAILED", "KILLED"):
            break
        time.sleep(1)
    assert app["state"] == "KILLED", app["state"]
