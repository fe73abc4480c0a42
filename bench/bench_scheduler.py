"""The pipeline under the real scheduler, as a user runs it: `bin/airflow standalone` (LocalExecutor),
a run of kmeans_image_clustering triggered through the REST API on the 6 sample photos (K=8), timed
from the trigger to success, against the CLI on the same photos (the reference, same script).

Prints: wall time trigger -> success, task instances (total, ran), the idle time between tasks
(wall time minus the union of task run intervals), and the ratio to the CLI.

Usage: .venv/bin/python bench/bench_scheduler.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
K = 8


def request(url: str, token: str | None = None, body=None, method: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=30) as response:
        return json.load(response)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, end = 0.0, None
    for lo, hi in sorted(intervals):
        if end is None or lo > end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def standalone(work: str, extra_env: dict, dag: str = "kmeans_image_clustering"):
    """`bin/airflow standalone` with its home in ``work`` (its own process group; stop it with
    os.killpg), healthy, ``dag`` unpaused once parsed: (server, API base URL, admin token)."""
    home, port = os.path.join(work, "airflow-home"), free_port()
    api = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/", **extra_env}
    log = open(os.path.join(work, "standalone.log"), "wb")
    server = subprocess.Popen([os.path.join(ROOT, "bin", "airflow"), "standalone"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(150):
        try:
            if request(f"{api}/api/v2/monitor/health")["scheduler"]["status"] == "healthy":
                break
        except OSError:
            pass
        time.sleep(2)
    password = json.load(open(os.path.join(home, "simple_auth_manager_passwords.json.generated")))["admin"]
    token = request(f"{api}/auth/token", body={"username": "admin", "password": password})["access_token"]
    for _ in range(60):  # the dag-processor parses the DAG file first
        try:
            request(f"{api}/api/v2/dags/{dag}", token, {"is_paused": False}, "PATCH")
            break
        except OSError:
            time.sleep(2)
    return server, api, token


def main() -> None:
    from kmeans_ops.samples import write_samples

    work = tempfile.mkdtemp(prefix="bench-scheduler-")
    photos = os.path.join(work, "photos")
    write_samples(photos)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kmeans_ops", "quantize", photos, "-k", str(K), "--out",
                    os.path.join(work, "cli"), "-q"], check=True)
    cli = time.perf_counter() - started

    server, api, token = standalone(work, {"AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS": json.dumps([work])})
    try:
        dag = "kmeans_image_clustering"
        conf = {"input": [photos], "k": K, "output": os.path.join(work, "dag")}
        triggered = time.perf_counter()
        run = request(f"{api}/api/v2/dags/{dag}/dagRuns", token, {"logical_date": None, "conf": conf})
        while True:
            state = request(f"{api}/api/v2/dags/{dag}/dagRuns/{run['dag_run_id']}", token)["state"]
            if state in ("success", "failed"):
                break
            time.sleep(0.5)
        wall = time.perf_counter() - triggered
        tis = request(f"{api}/api/v2/dags/{dag}/dagRuns/{run['dag_run_id']}/taskInstances?limit=1000", token)
        ran = [t for t in tis["task_instances"] if t["start_date"] and t["end_date"]]
        busy = busy_seconds([(stamp(t["start_date"]), stamp(t["end_date"])) for t in ran])
        note = request(f"{api}/api/v2/dags/{dag}/dagRuns/{run['dag_run_id']}", token).get("note")
        print(f"6 sample photos, K={K}, LocalExecutor")
        print(f"  CLI:                        {cli:6.1f} s")
        print(f"  DAG, trigger -> {state}: {wall:6.1f} s  ({wall / cli:.0f}x the CLI)")
        print(f"  task instances: {tis['total_entries']} ({len(ran)} ran); tasks running {busy:.1f} s, "
              f"idle between tasks {wall - busy:.1f} s")
        print(f"  run note: {note}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=90)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
