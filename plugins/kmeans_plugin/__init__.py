"""The Airflow side of kmeans-colours: operators (kmeans_plugin.operators), triggers
(kmeans_plugin.triggers), extra links (kmeans_plugin.links), the plugin with the results app
(kmeans_plugin.plugin) and the provider's description (kmeans_plugin.provider).

Importing this package imports nothing else: Airflow reads the provider's description while it
loads its own configuration, before anything of Airflow may be imported.
"""
