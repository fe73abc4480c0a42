"""What the results app may serve, decided without HTTP: which folder a run published, whether that
folder may be served, and which file of it a requested name means.

- A run's folder comes only from Airflow's metadata: the return value (XCom) of the run's
  successful ``publish`` task, an absolute path or an ``hdfs://`` URI (a run of engine hadoop
  published on HDFS, read through WebHDFS: kmeans_ops.hdfs). Never from the client.
- It is served only when it resolves under the allowed roots (kmeans_ops.paths.AllowedRoots), is
  a published run (kmeans_ops.publish.is_published: it holds summary.json and is no symlink) and
  its summary.json names that same DAG and run id (kmeans_ops.publish.published_by): someone who
  may edit XComs can make a run's link show nothing, never another run's or a foreign folder.
- A name is a plain file name of that folder (no ``/``, no ``..``, no hidden file) with a known
  type; its resolved path must still lie in the folder, so a symlink pointing out is refused (HDFS
  has none), and it must be a regular file.
"""

from __future__ import annotations

import os
import posixpath

#: The task whose return value is the run's published folder.
PUBLISH_TASK_ID = "publish"
#: The DAG whose runs the results page lists.
RESULTS_DAG_ID = "kmeans_image_clustering"
REPORT = "report.html"
#: File types a published run holds, by suffix; anything else is not served. HTML only as REPORT.
CONTENT_TYPES = {".png": "image/png", ".json": "application/json"}
HTML_TYPE = "text/html; charset=utf-8"


def servable_folder(folder, roots, dag_id: str, run_id: str) -> str | None:
    """The resolved path of ``folder`` if it is a folder (an absolute local path or an ``hdfs://``
    URI) under ``roots`` (an AllowedRoots) published by run ``run_id`` of ``dag_id``, else None.
    HDFS errors (kmeans_ops.hdfs.HdfsError) are raised."""
    from kmeans_ops.paths import is_hdfs, resolve
    from kmeans_ops.publish import published_by

    if not isinstance(folder, str) or not folder or "\0" in folder or not (is_hdfs(folder) or os.path.isabs(folder)):
        return None
    try:
        if not roots.contains(folder):
            return None
        real = resolve(folder)
    except (OSError, ValueError):
        return None
    return real if published_by(real, dag_id, run_id) else None


def content_type(name: str) -> str | None:
    """The Content-Type a published file is served with, or None when it is not served."""
    if name == REPORT:
        return HTML_TYPE
    return CONTENT_TYPES.get(os.path.splitext(name)[1].lower())


def file_in(folder: str, name: str) -> str | None:
    """The path of the file ``name`` directly inside ``folder`` (already resolved; local or
    ``hdfs://``), or None when ``name`` is not a plain, servable file name or resolves outside the
    folder."""
    from kmeans_ops.paths import filesystem

    if not name or name.startswith(".") or any(ch in name for ch in ("/", "\\", "\0")):
        return None
    if content_type(name) is None:
        return None
    fs = filesystem(folder)
    real = fs.resolve(fs.join(folder, name))
    if posixpath.dirname(real) != folder or not fs.is_file(real):
        return None
    return real


def open_file(path: str):
    """(size in bytes, the bytes in chunks) of a file that :func:`file_in` returned: opened now,
    read from the local disk or streamed from HDFS through WebHDFS."""
    from kmeans_ops.paths import filesystem

    fs = filesystem(path)
    return fs.stat(path).size, fs.reader(path)


def summary_of(folder: str) -> dict | None:
    """A published run's figures for the results page (from its summary.json), or None when the
    file cannot be read."""
    from kmeans_ops.publish import read_summary

    try:
        summary = read_summary(folder)
        run = summary.get("run") or {}
        params = run.get("params") or {}
        return {"images": len(summary.get("images") or []), "failures": len(summary.get("failures") or []),
                "k": params.get("k"), "engine": run.get("engine")}
    except (AttributeError, TypeError):
        return None


def _xcom_value(row):
    """The Python value of a row's ``value`` column, decoded as Airflow stores XComs."""
    from airflow.models.xcom import XComModel

    return XComModel.deserialize_value(row)


def _published_select(dag_id: str):
    """SELECT run_id, end_date, value of the successful publish task instances of ``dag_id`` that
    returned a value."""
    from sqlalchemy import and_, select

    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.xcom import XComModel
    from airflow.utils.state import TaskInstanceState

    return (
        select(TI.run_id, TI.end_date, XComModel.value)
        .join(XComModel, and_(XComModel.dag_id == TI.dag_id, XComModel.run_id == TI.run_id,
                              XComModel.task_id == TI.task_id, XComModel.map_index == TI.map_index,
                              XComModel.key == "return_value"))
        .where(TI.dag_id == dag_id, TI.task_id == PUBLISH_TASK_ID, TI.map_index == -1,
               TI.state == TaskInstanceState.SUCCESS)
    )


def published_folder(session, dag_id: str, run_id: str):
    """What the run's successful ``publish`` task returned (its published folder), or None."""
    from airflow.models.taskinstance import TaskInstance as TI

    row = session.execute(_published_select(dag_id).where(TI.run_id == run_id)).first()
    return None if row is None else _xcom_value(row)


def recent_publications(session, dag_id: str, limit: int) -> list[tuple[str, object, object]]:
    """(run id, end date, returned folder) of the newest successful ``publish`` task instances."""
    from airflow.models.taskinstance import TaskInstance as TI

    rows = session.execute(_published_select(dag_id).order_by(TI.end_date.desc()).limit(limit)).all()
    return [(row.run_id, row.end_date, _xcom_value(row)) for row in rows]


def format_time(when) -> str:
    """``2025-11-28 02:12:09 UTC`` (Airflow keeps times in UTC), or an empty string."""
    if when is None:
        return ""
    from datetime import timezone

    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")
