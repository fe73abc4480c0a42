#!/usr/bin/env python3
"""Print the stderr tail of the failed task attempts of a MapReduce job that ran on YARN.

Reference implementation (standard library only) of how to find a failing streaming task's stderr
(e.g. a Python traceback), which the submitting client never prints:

  1. application id: from the client's log, line "impl.YarnClientImpl: Submitted application
     application_<ts>_<n>"; the MR job id is the same with "job_" instead of "application_".
  2. JobHistory REST: /ws/v1/history/mapreduce/jobs/<job>/tasks, then .../tasks/<task>/attempts ->
     failed attempts with "assignedContainerId", "nodeHttpAddress" and "diagnostics".
  3. NodeManager REST: http://<nodeHttpAddress>/ws/v1/node/containerlogs/<container>/stderr?size=-N
     (last N bytes; log aggregation is off, so the NM serves the local files). Same file on disk:
     $HADOOP_DEV_USERLOGS/<application>/<container>/stderr (yarn.nodemanager.log-dirs).
  If the MR ApplicationMaster itself failed there is no job in the history server: fall back to the
  ResourceManager's app diagnostics and the AM container's stderr/syslog.

usage: failed_task_stderr.py (application_<id> | job_<id> | --client-log FILE) [--bytes N]
exit status: 0 if at least one failed attempt's stderr was printed, 1 otherwise.
"""
import argparse
import glob
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

RM = os.environ.get("HADOOP_DEV_RM", "http://127.0.0.1:8088")
JHS = os.environ.get("HADOOP_DEV_JHS", "http://127.0.0.1:19888")
USERLOGS = os.environ.get("HADOOP_DEV_USERLOGS", "")


def get(url, as_json=True, timeout=10):
    # the containerlogs endpoint answers 406 to "Accept: application/json"
    req = urllib.request.Request(url, headers={"Accept": "application/json" if as_json else "*/*"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read().decode("utf-8", "replace")
    return json.loads(body) if as_json else body


def as_list(x):
    """Jersey renders a one-element list as a bare object."""
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def strip_nm_header(text):
    """The NM containerlogs endpoint wraps the file in Container:/LogType:/LogContents: lines."""
    if "LogContents:\n" in text:
        text = text.split("LogContents:\n", 1)[1]
    return re.sub(r"\nEnd of LogType:.*\Z", "\n", text, flags=re.S).rstrip("\n")


def container_log(node_http, app_id, container, name, nbytes):
    try:
        return strip_nm_header(get(
            f"http://{node_http}/ws/v1/node/containerlogs/{container}/{name}?size=-{nbytes}",
            as_json=False))
    except (urllib.error.URLError, OSError) as exc:
        paths = glob.glob(os.path.join(USERLOGS, app_id, container, name)) if USERLOGS else []
        if paths:
            with open(paths[0], "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - nbytes))
                return fh.read().decode("utf-8", "replace")
        return f"<could not read {name} of {container}: {exc}>"


def app_id_from_log(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        m = re.search(r"Submitted application (application_\d+_\d+)", fh.read())
    if not m:
        sys.exit(f"no 'Submitted application application_...' line in {path}")
    return m.group(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("id", nargs="?", help="application_<ts>_<n> or job_<ts>_<n>")
    ap.add_argument("--client-log", help="the streaming client's stdout+stderr")
    ap.add_argument("--bytes", type=int, default=4096, help="tail size per log (default 4096)")
    ap.add_argument("--wait", type=float, default=30, help="seconds to wait for the history server")
    args = ap.parse_args()
    app_id = app_id_from_log(args.client_log) if args.client_log else args.id
    if not app_id:
        ap.error("give an id or --client-log")
    app_id = app_id.replace("job_", "application_")
    job_id = app_id.replace("application_", "job_")

    # The history server learns about a job when the AM finishes writing its history file.
    deadline = time.time() + args.wait
    tasks = None
    while True:
        try:
            tasks = as_list(get(f"{JHS}/ws/v1/history/mapreduce/jobs/{job_id}/tasks")
                            .get("tasks", {}).get("task"))
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.time() > deadline:
                break
            time.sleep(1)

    printed = 0
    if tasks is not None:
        for task in tasks:
            if task.get("state") != "FAILED":
                continue
            attempts = as_list(get(f"{JHS}/ws/v1/history/mapreduce/jobs/{job_id}/tasks/"
                                   f"{task['id']}/attempts")["taskAttempts"].get("taskAttempt"))
            for att in attempts:
                if att.get("state") != "FAILED":
                    continue
                container = att.get("assignedContainerId")
                diag = (att.get("diagnostics") or "").strip().splitlines()
                print(f"=== {att['id']} FAILED on {att.get('nodeHttpAddress')} ({container})")
                print(f"diagnostics: {diag[0] if diag else ''}")
                print("--- stderr (tail) ---")
                print(container_log(att.get("nodeHttpAddress"), app_id, container, "stderr",
                                    args.bytes))
                printed += 1
    if printed == 0:
        # AM failure (or history not available): ResourceManager diagnostics + AM container logs.
        try:
            app = get(f"{RM}/ws/v1/cluster/apps/{app_id}")["app"]
        except urllib.error.HTTPError as exc:  # e.g. the RM was restarted since (no RM recovery)
            print(f"{app_id}: no failed attempts found and the ResourceManager says {exc}")
            return 1
        print(f"=== {app_id} state={app.get('state')} final={app.get('finalStatus')}")
        print(f"RM diagnostics: {app.get('diagnostics', '').strip()}")
        attempts = as_list(get(f"{RM}/ws/v1/cluster/apps/{app_id}/appattempts")
                           ["appAttempts"].get("appAttempt"))
        for att in attempts:
            node = att.get("nodeHttpAddress")
            container = att.get("containerId")
            for name in ("stderr", "syslog"):
                print(f"--- AM {container} {name} (tail) ---")
                print(container_log(node, app_id, container, name, args.bytes))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
