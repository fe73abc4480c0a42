#!/usr/bin/env bash
# Entrypoint of the kmeans Airflow image (deploy/airflow.Dockerfile), for every Airflow service.
#
# 1. Renders the Hadoop client configuration ($HADOOP_CONF_DIR/*.xml) from the
#    <FILE>.XML_<property> variables that docker-compose.yaml passes in from deploy/hadoop.env: the
#    very settings the Hadoop services render for themselves (apache/hadoop image, envtoconf.py).
# 2. Hands over to the official Airflow entrypoint (/entrypoint): waits for the metadata DB, runs
#    `airflow db migrate` when _AIRFLOW_DB_MIGRATE is set, then runs the command (api-server,
#    scheduler, dag-processor, triggerer, `bash ...`, `airflow ...`).
set -euo pipefail

if [[ -n "${HADOOP_CONF_DIR:-}" ]]; then
  python3 /opt/kmeans/deploy/hadoop_conf.py --destination "$HADOOP_CONF_DIR"
fi
exec /entrypoint "$@"
