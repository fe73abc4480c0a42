"""Extra links shown on a task in the Airflow UI.

Airflow 3 computes a task's links when the task finishes (in the worker) and keeps them as XComs;
its UI renders only http(s), mailto and same-origin URLs, so a ``file://`` link never shows.

- **Report** (on ``PublishOperator``): the run's ``report.html``, served by this plugin's results
  app on the API server (``/kmeans/runs/<dag id>/<run id>/report.html``, same origin as the UI,
  Airflow's own login). Built from the task instance key, and only when the task returned the
  published folder: it never names a staging or work folder.
- **YARN application** (on ``KMeansIterationOperator``): the tracking URL of the task's Hadoop job.
- The former **Outputs** link is gone: it pointed at the run's work area (``file://``, never
  rendered), which ``cleanup`` deletes.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

YARN_KEY = "kmeans_yarn_url"
#: Where the plugin's FastAPI app is mounted on the API server.
URL_PREFIX = "/kmeans"


def _xcom(ti_key, key):
    from airflow.providers.common.compat.sdk import XCom

    return XCom.get_value(ti_key=ti_key, key=key)


def api_root_path(base_url: str | None) -> str:
    """The path part of Airflow's ``[api] base_url``, ending in ``/`` (``/`` when unset)."""
    path = urlsplit(base_url or "").path
    return path if path.endswith("/") else path + "/"


def run_file_path(dag_id: str, run_id: str, name: str) -> str:
    """``runs/<dag id>/<run id>/<name>``, each part percent-encoded: a file of a run's published
    folder, relative to the results app's mount point."""
    return "runs/" + "/".join(quote(part, safe="") for part in (dag_id, run_id, name))


def run_file_url(dag_id: str, run_id: str, name: str, root: str = "/") -> str:
    """Same-origin URL (an absolute path) of one file of a run's published folder, served by the
    results app; ``root`` is the API server's root path (api_root_path)."""
    return f"{root.rstrip('/')}{URL_PREFIX}/{run_file_path(dag_id, run_id, name)}"


class ReportLink(BaseOperatorLink):
    """The run's HTML report, once the task has published it."""

    name = "Report"

    def get_link(self, operator, *, ti_key) -> str:
        if not _xcom(ti_key, "return_value"):  # nothing published (the task failed)
            return ""
        from airflow.providers.common.compat.sdk import conf

        root = api_root_path(conf.get("api", "base_url", fallback=""))
        return run_file_url(ti_key.dag_id, ti_key.run_id, "report.html", root)


class YarnApplicationLink(BaseOperatorLink):
    """The YARN application of the task's MapReduce job (Hadoop engine)."""

    name = "YARN application"

    def get_link(self, operator, *, ti_key) -> str:
        return _xcom(ti_key, YARN_KEY) or ""
