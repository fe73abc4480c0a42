"""The Airflow provider of the distribution ``kmeans-colours`` (entry point ``apache_airflow_provider``).

Installed with pip, the package needs no ``plugins/`` folder. Airflow's ProvidersManager reads
:func:`get_provider_info` (``airflow providers list`` shows it: operators, triggers, extra links),
and the plugin itself (the results app and its view, the listener, the macros, the links) is
declared through the ``airflow.plugins`` entry point, which Airflow always loads (only that copy:
the editable build's ``kmeans_colours.egg-info`` left in a checkout on ``sys.path`` would be a second
one, so ``make setup`` removes it). It is not also
named here under ``plugins``: Airflow loads a provider's plugins only with ``[core]
lazy_discover_providers = False``, and then it would register the plugin a second time. DAGs
import the operators as ``from kmeans_plugin.operators import KMeansIterationOperator``; the
project's own two DAGs ship as examples in ``kmeans_plugin.example_dags``.
"""

from __future__ import annotations


def get_provider_info() -> dict:
    from kmeans_ops import __version__

    return {
        "package-name": "kmeans-colours",
        "name": "K-means colours",
        "description": "K-means colour quantisation of images at scale: an embedded MapReduce engine and "
                       "Hadoop Streaming on YARN, driven by Airflow (operators, triggers, results app).",
        "versions": [__version__],
        "integrations": [{"integration-name": "K-means colours", "external-doc-url":
                          "https://github.com/kmeans-colours/kmeans-colours", "tags": ["software"]}],
        "operators": [{"integration-name": "K-means colours", "python-modules": ["kmeans_plugin.operators"]}],
        "triggers": [{"integration-name": "K-means colours", "python-modules": ["kmeans_plugin.triggers"]}],
        "extra-links": ["kmeans_plugin.links.ReportLink", "kmeans_plugin.links.YarnApplicationLink"],
    }
