"""The results app: published K-means runs, served by the Airflow API server (same origin as the UI).

The plugin mounts it under ``/kmeans`` (kmeans_plugin.plugin). Read only: GET routes only.

Authentication: Airflow mounts a plugin app with ``app.mount()``, which inherits none of the core
API's dependencies, so an undeclared route would be open to anyone. Every route here declares
Airflow's own ``requires_access_dag`` dependency (airflow.api_fastapi.core_api.security): the
caller is the user of the UI's ``_token`` cookie or of an ``Authorization: Bearer`` token (401
without one, 401/403 for a bad one), and the configured auth manager must let that user read the
DAG's task instances (403 otherwise).

Routes (below the mount point):

- ``GET /results``: the newest successful ``publish`` tasks of ``kmeans_image_clustering``, with
  a link to each report; shown in the UI's navigation (the plugin's external view).
- ``GET /runs/<dag id>/<run id>/<name>``: one file (``report.html``, images, JSON) of the folder
  the run's ``publish`` task returned, local or on HDFS (streamed through WebHDFS), under the
  rules of kmeans_plugin.results; 404 otherwise, 503 when HDFS cannot be read now.
- ``GET /runs/<dag id>/<run id>/``: redirects to the report.
"""

from __future__ import annotations

import logging
import os
import posixpath
from contextlib import contextmanager

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from kmeans_plugin import results as rules
from kmeans_plugin.links import run_file_path

log = logging.getLogger(__name__)

TEMPLATES = Environment(
    loader=FileSystemLoader(os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")),
    autoescape=select_autoescape(("html",)),
    trim_blocks=True,
    lstrip_blocks=True,
)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Every answer: no MIME sniffing; private, revalidated (a cleared and re-run run replaces its folder).
HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-cache"}
#: HTML answers: no script at all, images from here or inline, inline styles; framed by the UI only.
HTML_POLICY = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'self'")

app = FastAPI(title="K-means results", docs_url=None, redoc_url=None, openapi_url=None)


def allowed_roots():
    """The allowed roots now (the Variable may change while the server runs); 503 if unusable."""
    from kmeans_ops.paths import AllowedRoots
    from kmeans_ops.settings import SettingError

    try:
        return AllowedRoots.from_settings()
    except SettingError as err:
        raise HTTPException(503, f"results cannot be served: {err}") from None


def _headers(content_type: str) -> dict[str, str]:
    if content_type.startswith("text/html"):
        return {**HEADERS, "Content-Security-Policy": HTML_POLICY}
    return dict(HEADERS)


@app.get("/runs/{dag_id}/{run_id}/{name:path}",
         dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))])
def run_file(dag_id: str, run_id: str, name: str, session: SessionDep):
    """One file of a run's published folder (the folder comes from the run's ``publish`` task)."""
    if name == "":
        return RedirectResponse(rules.REPORT, headers=HEADERS)
    returned = rules.published_folder(session, dag_id, run_id)
    if returned is None:
        raise HTTPException(404, f"DAG {dag_id}, run {run_id}: no successful publish task, nothing published")
    with hdfs_unavailable(dag_id, run_id):
        folder = rules.servable_folder(returned, allowed_roots(), dag_id, run_id)
        if folder is None:
            log.warning("not serving run %s of %s: its folder is outside the allowed roots or not a published run",
                        run_id, dag_id)
            raise HTTPException(404, f"DAG {dag_id}, run {run_id}: its results are not served (outside the allowed "
                                     f"roots, no longer a published run, or published by another run)")
        path = rules.file_in(folder, name)
        if path is None:
            raise HTTPException(404, f"DAG {dag_id}, run {run_id}: no such file in the run's results")
        try:
            size, chunks = rules.open_file(path)
        except (OSError, AttributeError):  # removed since it was checked
            raise HTTPException(404, f"DAG {dag_id}, run {run_id}: no such file in the run's results") from None
    content_type = rules.content_type(posixpath.basename(path))  # of the file served, not of the name asked
    headers = {**_headers(content_type), "Content-Length": str(size)}
    return StreamingResponse(chunks, media_type=content_type, headers=headers)


@contextmanager
def hdfs_unavailable(dag_id: str, run_id: str):
    """503 (one line naming the run; the HDFS error, which names the path and the NameNode, only in
    the server's log) when a run published on HDFS cannot be read now."""
    from kmeans_ops.hdfs import HdfsError

    try:
        yield
    except HdfsError as err:
        log.warning("results of run %s of %s cannot be read: %s", run_id, dag_id, err)
        raise HTTPException(503, f"DAG {dag_id}, run {run_id}: its results on HDFS cannot be read now") from None


@app.get("/results", response_class=HTMLResponse,
         dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE,
                                                   param_dag_id=rules.RESULTS_DAG_ID))])
def results_page(session: SessionDep, limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)):
    """The newest published runs, newest first, each with its report link when it is served."""
    roots = allowed_roots()
    runs = []
    for run_id, end_date, returned in rules.recent_publications(session, rules.RESULTS_DAG_ID, limit):
        try:
            with hdfs_unavailable(rules.RESULTS_DAG_ID, run_id):
                folder = rules.servable_folder(returned, roots, rules.RESULTS_DAG_ID, run_id)
                summary = rules.summary_of(folder) if folder else None
        except HTTPException:  # this run's HDFS cannot be read now: listed as not available
            summary = None
        runs.append({
            "run_id": run_id,
            "published": rules.format_time(end_date),
            "summary": summary,
            "report": run_file_path(rules.RESULTS_DAG_ID, run_id, rules.REPORT) if summary else None,
        })
    html = TEMPLATES.get_template("results.html").render(dag_id=rules.RESULTS_DAG_ID, runs=runs, limit=limit)
    return HTMLResponse(html, headers=_headers("text/html"))
