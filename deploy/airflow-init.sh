#!/usr/bin/env bash
# One-off set-up run by the airflow-init service (as root, through /entrypoint, which has already
# waited for Postgres and run `airflow db migrate` because _AIRFLOW_DB_MIGRATE=true):
#   - checks the migration really happened (/entrypoint ignores a failed `airflow db migrate`),
#   - writes the admin user's password for the SimpleAuthManager (Airflow 3's default auth manager;
#     the FAB provider and its `airflow users create` are not installed, so _AIRFLOW_WWW_USER_CREATE
#     is not used): user = AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS, password = _AIRFLOW_WWW_USER_PASSWORD
#     (the read-only kmeans_report: the password of the connection AIRFLOW_CONN_KMEANS_AIRFLOW_API),
#   - gives the shared named volumes to the Airflow user (AIRFLOW_UID, group 0).
set -euo pipefail

uid="${AIRFLOW_UID:-50000}"

echo "airflow-init: checking the metadata DB schema"
airflow db check-migrations -t 60

passwords="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?not set}"
mkdir -p "$(dirname "$passwords")"
python3 - "$passwords" <<'PY'
import json, os, sys
users = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "")
password = os.environ.get("_AIRFLOW_WWW_USER_PASSWORD") or "airflow"
names = [entry.split(":")[0].strip() for entry in users.split(",") if entry.strip()]
passwords = {name: password for name in names}
report = json.loads(os.environ.get("AIRFLOW_CONN_KMEANS_AIRFLOW_API") or "{}")
if report.get("login") in passwords:  # the report's read-only user: the password of its connection
    passwords[report["login"]] = report["password"]
with open(sys.argv[1], "w", encoding="utf-8") as handle:
    json.dump(passwords, handle)
    handle.write("\n")
print(f"airflow-init: password set for {', '.join(names) or 'nobody'} in {sys.argv[1]}")
PY

for dir in /opt/airflow/logs "$(dirname "$passwords")" "${KMEANS_WORK_ROOT:?}" "${KMEANS_OUTPUT_ROOT:?}"; do
  mkdir -p "$dir"
  chown -R "$uid:0" "$dir"
  chmod -R g+rwX "$dir"
done

echo "airflow-init: Airflow $(airflow version)"
# the Hadoop client (on the image's JDK) must start: it submits the streaming jobs
"$HADOOP_HOME/bin/hadoop" version
