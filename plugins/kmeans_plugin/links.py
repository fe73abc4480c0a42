"""Extra links shown on a task in the Airflow UI.

The task pushes the URL as an XCom (key ``kmeans_outputs_url`` or ``kmeans_yarn_url``); the link
reads it back (Airflow 3 resolves links when the task finishes).
"""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink

OUTPUTS_KEY = "kmeans_outputs_url"
YARN_KEY = "kmeans_yarn_url"


def _xcom(ti_key, key):
    from airflow.providers.common.compat.sdk import XCom

    return XCom.get_value(ti_key=ti_key, key=key)


class OutputsLink(BaseOperatorLink):
    """The folder (or report) the task wrote."""

    name = "Outputs"

    def get_link(self, operator, *, ti_key) -> str:
        return _xcom(ti_key, OUTPUTS_KEY) or ""


class YarnApplicationLink(BaseOperatorLink):
    """The YARN application of the task's MapReduce job (Hadoop engine)."""

    name = "YARN application"

    def get_link(self, operator, *, ti_key) -> str:
        return _xcom(ti_key, YARN_KEY) or ""
