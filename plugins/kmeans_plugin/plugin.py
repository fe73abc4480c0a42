"""The K-means pipeline's Airflow plugin (entry point ``airflow.plugins``: ``kmeans``).

- Operator extra links: **Report** (PublishOperator: the run's report, served by the results app)
  and **YARN application** (KMeansIterationOperator, Hadoop engine). See kmeans_plugin.links.
- Macros for the run's paths (kmeans_plugin.macros).
- The results app (kmeans_plugin.web), mounted on the API server under ``/kmeans``: a run's
  published report, images and JSON, and a page of recent results, behind Airflow's own login.
- An external view, **K-means results** in the UI's Browse menu, showing that page.
- A listener that writes, as each run's note, which iteration exited and why (kmeans_plugin.listener).

The operators live in kmeans_plugin.operators. DAG files and task workers import this package
(through kmeans_plugin.operators), so it stays light: the results app and its FastAPI and Airflow
API imports are loaded by the API server on the app's first request (``_LazyApp``).
"""

from __future__ import annotations

import importlib

from airflow.plugins_manager import AirflowPlugin

from kmeans_plugin import listener, macros
from kmeans_plugin.links import URL_PREFIX, ReportLink, YarnApplicationLink, api_root_path


class _LazyApp:
    """An ASGI app that imports ``module:attribute`` on its first call and hands every call to it.

    A mounted app gets no lifespan events, so nothing is lost by starting it late.
    """

    def __init__(self, target: str):
        self.target = target
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            module, attribute = self.target.split(":")
            self._app = getattr(importlib.import_module(module), attribute)
        await self._app(scope, receive, send)


def _results_href() -> str:
    from airflow.configuration import conf

    return api_root_path(conf.get("api", "base_url", fallback="")) + URL_PREFIX.lstrip("/") + "/results"


class KMeansPlugin(AirflowPlugin):
    name = "kmeans"
    macros = [macros.run_key, macros.work_dir, macros.output_dir]
    operator_extra_links = [ReportLink(), YarnApplicationLink()]
    listeners = [listener]  # the run's note: which iteration exited, and why
    fastapi_apps = [{"app": _LazyApp("kmeans_plugin.web:app"), "url_prefix": URL_PREFIX, "name": "K-means results"}]
    external_views = [{
        "name": "K-means results",
        "href": _results_href(),
        "destination": "nav",
        "category": "browse",
        "url_route": "kmeans-results",
    }]
