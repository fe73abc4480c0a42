"""`bin/airflow standalone` as a user runs it: it comes up healthy, a run of kmeans_image_clustering
triggered through the REST API completes under the real scheduler (LocalExecutor) with its note,
its Report link and the report's waiting and running per stage, and Ctrl+C (SIGINT) or SIGTERM
leaves nothing running."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from urllib.parse import quote

import cv2

from conftest import ROOT, check_time_per_stage, photo_bgr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, token: str | None = None, body=None, method: str | None = None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=30) as response:
        return json.load(response)


def healthy(port: int) -> bool:
    try:
        return request(f"http://127.0.0.1:{port}/api/v2/monitor/health")["scheduler"]["status"] == "healthy"
    except (OSError, ValueError, KeyError):
        return False


def airflow_processes(home: str) -> list[str]:
    """Processes whose environment holds this AIRFLOW_HOME (every component of this standalone)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if f"AIRFLOW_HOME={home}".encode() in handle.read().split(b"\0"):
                    with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                        command = cmd.read().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{pid}: {command}")
        except OSError:
            continue
    return found


class Standalone:
    """`bin/airflow standalone` in a fresh AIRFLOW_HOME on a free port, in its own session (as a
    terminal runs it: Ctrl+C reaches bin/airflow)."""

    def __init__(self, tmp_path, roots: list[str]):
        self.home, self.port = str(tmp_path / "airflow-home"), free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "AIRFLOW_HOME": self.home, "AIRFLOW__API__PORT": str(self.port),
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{self.port}/execution/",
               "AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS": json.dumps(roots)}
        self.log = tmp_path / "standalone.log"
        self.process = subprocess.Popen([os.path.join(ROOT, "bin", "airflow"), "standalone"], env=env,
                                        stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not healthy(self.port):
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            time.sleep(2)
        assert healthy(self.port), "standalone did not come up in 300 s"

    def token(self) -> str:
        password = json.load(open(os.path.join(self.home, "simple_auth_manager_passwords.json.generated")))["admin"]
        return request(f"{self.api}/auth/token", body={"username": "admin", "password": password})["access_token"]

    def unpause(self, token: str, dag: str) -> None:
        """Unpause ``dag`` once the dag-processor has parsed the DAG files."""
        for _ in range(60):
            try:
                request(f"{self.api}/api/v2/dags/{dag}", token, {"is_paused": False}, "PATCH")
                return
            except OSError:
                time.sleep(2)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        for line in airflow_processes(self.home):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def stops_completely(server: Standalone, sig: int, status: int) -> None:
    assert len(airflow_processes(server.home)) >= 4  # scheduler, api-server, dag-processor, triggerer, ...
    server.process.send_signal(sig)
    assert server.process.wait(timeout=90) == status
    time.sleep(1)
    assert airflow_processes(server.home) == []
    assert not healthy(server.port)


def test_a_run_through_the_rest_api_under_the_scheduler_then_ctrl_c(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee", "rocket"):
        cv2.imwrite(str(photos / f"{name}.png"), photo_bgr(name)[::4, ::4])
    server = Standalone(tmp_path, [str(tmp_path)])
    try:
        token, dag = server.token(), "kmeans_image_clustering"
        server.unpause(token, dag)
        conf = {"input": [str(photos)], "k": 4, "output": str(tmp_path / "out")}
        run = request(f"{server.api}/api/v2/dags/{dag}/dagRuns", token, {"logical_date": None, "conf": conf})
        runs = f"{server.api}/api/v2/dags/{dag}/dagRuns/{quote(run['dag_run_id'], safe='')}"
        deadline = time.time() + 600
        while time.time() < deadline and request(runs, token)["state"] not in ("success", "failed"):
            time.sleep(1)
        final = request(runs, token)
        assert final["state"] == "success"
        assert final["note"].startswith(("Converged at iteration", "Stopped at iteration")) and "2 image(s)" in final["note"]
        assert sorted(os.listdir(tmp_path / "out" / "latest")) == [
            "coffee.json", "coffee.png", "report.html", "rocket.json", "rocket.png", "summary.json"]
        # the report's waiting and running per stage: the publish task read the run's task
        # instances through the REST API (a worker may not read the metadata DB)
        check_time_per_stage(str(tmp_path / "out" / "latest"))
        report = request(f"{runs}/taskInstances/publish/links", token)["extra_links"]["Report"]
        assert report.endswith("/report.html") and report.startswith("/kmeans/runs/")
        stops_completely(server, signal.SIGINT, 130)
    finally:
        server.kill()


def test_sigterm_stops_everything(tmp_path):
    server = Standalone(tmp_path, [str(tmp_path)])
    try:
        stops_completely(server, signal.SIGTERM, 143)
    finally:
        server.kill()
