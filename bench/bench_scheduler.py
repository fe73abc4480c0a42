"""The pipeline under the real scheduler, as a user runs it: a fresh `bin/airflow standalone`
(LocalExecutor), the DAG unpaused as soon as it is parsed, then two runs of kmeans_image_clustering
triggered through the REST API on the 6 sample photos (K=8): the first run after start and a warm
one, each timed from the trigger to success, against the CLI on the same photos (the reference,
same script).

Prints for each run: wall time trigger -> success, task instances (total, ran), the time from the
trigger to the run's start, and per stage (kmeans_ops.stagetimes, from the task instances' own
timestamps, as the report shows them) its span split into waiting (no task of the stage running)
and running, with per task the mean scheduled -> queued and queued -> start; then the run's
report's own stage table (summary.json), and the ratio to the CLI.

Usage: .venv/bin/python bench/bench_scheduler.py [--keep] [--iterations-per-task N]
  --keep: leave the work folder, logs; --iterations-per-task N: the DAG param (default: the DAG's,
  settings.KMEANS_ITERATIONS_PER_TASK)
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
from urllib.parse import quote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "plugins"))
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


def trigger_and_wait(api: str, token: str, dag: str, conf: dict) -> tuple[dict, float, list[dict]]:
    """Trigger a run through the REST API and wait for its end: (the run, seconds from the trigger
    to its end, its task instances as kmeans_plugin.timings reads them)."""
    from kmeans_plugin.timings import via_api

    triggered = time.perf_counter()
    run = request(f"{api}/api/v2/dags/{dag}/dagRuns", token, {"logical_date": None, "conf": conf})
    url = f"{api}/api/v2/dags/{dag}/dagRuns/{quote(run['dag_run_id'], safe='')}"
    while request(url, token)["state"] not in ("success", "failed"):
        time.sleep(0.25)
    wall = time.perf_counter() - triggered
    return request(url, token), wall, via_api(api, token, dag, run["dag_run_id"])


def show(title: str, run: dict, wall: float, tis: list[dict], cli: float, output: str) -> None:
    from kmeans_ops.stagetimes import breakdown, stage_of

    started, ended = stamp(run["start_date"]), stamp(run["end_date"])
    ran = [t for t in tis if t["start"] is not None]
    print(f"{title}: trigger -> {run['state']} {wall:5.1f} s ({wall / cli:.1f}x the CLI); {len(tis)} task "
          f"instances ({len(ran)} ran); queued -> started {started - stamp(run['queued_at']):.2f} s")
    print(f"  {'stage':<12} {'tasks':>5} {'span':>7} {'waiting':>8} {'running':>8}   per task: "
          f"{'sched->queued':>13} {'queued->start':>13} {'running':>8}")
    for s in breakdown(tis, started, ended):
        n = s["tasks"]
        each = sum(t["end"] - t["start"] for t in ran if t["end"] and stage_of(t["task_id"]) == s["name"]) / n
        print(f"  {s['name']:<12} {n:5d} {s['seconds']:6.2f}s {s['waiting']:7.2f}s {s['running']:7.2f}s   "
              f"{' ' * 10}{s['scheduled_to_queued'] / n:12.3f}s {s['queued_to_start'] / n:12.3f}s {each:7.3f}s")
    summary = json.load(open(os.path.join(output, "latest", "summary.json")))
    print("  the report's stages (summary.json, at publication): " + ", ".join(
        f"{name} {seconds:.1f} s (waiting {waiting:.1f}, running {running:.1f})"
        for name, seconds, waiting, running in summary["run"]["stages"]))
    print(f"  run note: {run.get('note')}")


def main() -> None:
    from kmeans_ops.samples import write_samples

    keep = "--keep" in sys.argv[1:]
    extra = {}
    if "--iterations-per-task" in sys.argv[1:]:
        extra["iterations_per_task"] = int(sys.argv[sys.argv.index("--iterations-per-task") + 1])
    work = tempfile.mkdtemp(prefix="bench-scheduler-")
    photos = os.path.join(work, "photos")
    write_samples(photos)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kmeans_ops", "quantize", photos, "-k", str(K), "--out",
                    os.path.join(work, "cli"), "-q"], check=True)
    cli = time.perf_counter() - started

    print(f"6 sample photos, K={K}, LocalExecutor, iterations_per_task {extra.get('iterations_per_task', 'default')}; "
          f"load average before start: {os.getloadavg()[0]:.2f}")
    print(f"CLI (python -m kmeans_ops quantize): {cli:.1f} s")
    up = time.perf_counter()
    server, api, token = standalone(work, {"AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS": json.dumps([work])})
    print(f"standalone: healthy and the DAG unpaused {time.perf_counter() - up:.1f} s after start")
    try:
        dag = "kmeans_image_clustering"
        for title in ("first run after start", "warm run"):
            output = os.path.join(work, title.split()[0])
            run, wall, tis = trigger_and_wait(api, token, dag, {"input": [photos], "k": K, "output": output, **extra})
            show(title, run, wall, tis, cli, output)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=90)
        if keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
