"""The task instances of a DAG run, with their own timestamps (scheduled, queued, start, end), for
the report's waiting and running per stage (kmeans_ops.stagetimes).

A task cannot read the metadata DB under a real scheduler (the Task SDK blocks it) and the Task
SDK's calls give no queued or scheduled time, so the publish task asks Airflow's REST API, as a
read-only user, through the connection ``kmeans_airflow_api`` (an http connection: host, port,
login, password; `bin/airflow standalone` and docker-compose.yaml set it up). Without that
connection, or when the API does not answer, the run's task instances are read from the
metadata DB when the task runs in a process that may (``airflow dags test``, ``dag.test()``).
Neither: None, and the report says the split was not recorded.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import datetime
from urllib.parse import quote

log = logging.getLogger(__name__)

PAGE = 100


def _epoch(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp()


def from_api(item: dict) -> dict:
    """One task instance of the REST API (``/api/v2/.../taskInstances``) as kmeans_ops.stagetimes counts it."""
    return {"task_id": item["task_id"], "map_index": item.get("map_index", -1), "state": item.get("state"),
            "scheduled": _epoch(item.get("scheduled_when")), "queued": _epoch(item.get("queued_when")),
            "start": _epoch(item.get("start_date")), "end": _epoch(item.get("end_date"))}


def _call(url: str, token: str | None = None, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=20) as response:
        return json.load(response)


def via_api(base: str, token: str, dag_id: str, run_id: str) -> list[dict]:
    """Every task instance of the run (all map indexes), page by page."""
    url = f"{base}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances"
    items: list[dict] = []
    while True:
        page = _call(f"{url}?limit={PAGE}&offset={len(items)}", token)
        items += page["task_instances"]
        if not page["task_instances"] or len(items) >= page["total_entries"]:
            return [from_api(item) for item in items]


def api_token(base: str, login: str, password: str) -> str:
    return _call(f"{base}/auth/token", body={"username": login, "password": password})["access_token"]


def _via_connection(dag_id: str, run_id: str) -> list[dict] | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from kmeans_ops.settings import API_CONN_ID

    try:
        conn = Connection.get(API_CONN_ID)
    except AirflowNotFoundException:
        return None
    base = f"{conn.schema or 'http'}://{conn.host}{f':{conn.port}' if conn.port else ''}".rstrip("/")
    try:
        return via_api(base, api_token(base, conn.login, conn.password), dag_id, run_id)
    except (OSError, ValueError, KeyError) as err:  # no API server (dags test), refused credentials
        log.info("task instances not read from %s (%s): %s", base, API_CONN_ID, err)
        return None


def _via_database(dag_id: str, run_id: str) -> list[dict] | None:
    try:
        from sqlalchemy import select

        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.execute(select(TI.task_id, TI.map_index, TI.scheduled_dttm, TI.queued_dttm, TI.start_date,
                                          TI.end_date, TI.state).where(TI.dag_id == dag_id, TI.run_id == run_id)).all()
    except Exception as err:  # a worker under the scheduler: the Task SDK blocks the metadata DB
        log.info("task instances not read from the metadata DB: %s: %s", type(err).__name__, err)
        return None
    return [{"task_id": r[0], "map_index": r[1], "scheduled": _epoch(r[2]), "queued": _epoch(r[3]),
             "start": _epoch(r[4]), "end": _epoch(r[5]), "state": r[6] and str(getattr(r[6], "value", r[6]))} for r in rows]


def run_task_instances(dag_id: str, run_id: str) -> list[dict] | None:
    """The run's task instances (kmeans_ops.stagetimes's dicts), or None when they cannot be read."""
    found = _via_connection(dag_id, run_id)
    return found if found is not None else _via_database(dag_id, run_id)


#: The read-only user of `bin/airflow standalone` behind the connection (SimpleAuthManager role viewer).
STANDALONE_USER = "kmeans_report"


def standalone_connection(passwords_file: str, port: int) -> str:
    """The connection (JSON, for ``AIRFLOW_CONN_KMEANS_AIRFLOW_API``) of `bin/airflow standalone`'s
    API on ``port``, as STANDALONE_USER: its password is kept in the SimpleAuthManager's
    ``passwords_file`` (made, mode 600, if missing; the manager adds its own users' passwords
    beside it), so it stays the same from one start to the next."""
    import os
    import secrets

    passwords = {}
    if os.path.exists(passwords_file):
        with open(passwords_file, encoding="utf-8") as handle:
            passwords = json.loads(handle.read() or "{}")
    if STANDALONE_USER not in passwords:
        passwords[STANDALONE_USER] = secrets.token_urlsafe(18)
        fd = os.open(passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(passwords) + "\n")
    return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "login": STANDALONE_USER,
                       "password": passwords[STANDALONE_USER]})


if __name__ == "__main__":  # bin/airflow standalone: python -m kmeans_plugin.timings PASSWORDS_FILE PORT
    import sys

    print(standalone_connection(sys.argv[1], int(sys.argv[2])))
