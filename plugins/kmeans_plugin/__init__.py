"""The K-means pipeline's Airflow plugin: extra links to a task's outputs and YARN application,
and macros for the run's paths. The operators live in kmeans_plugin.operators."""

from airflow.plugins_manager import AirflowPlugin

from kmeans_plugin import macros
from kmeans_plugin.links import OutputsLink, YarnApplicationLink


class KMeansPlugin(AirflowPlugin):
    name = "kmeans"
    macros = [macros.run_key, macros.work_dir, macros.output_dir]
    operator_extra_links = [OutputsLink(), YarnApplicationLink()]
