"""YARN applications: submit a Hadoop Streaming job without waiting, then follow it on the
ResourceManager's REST API (``/ws/v1/cluster/apps/{id}``).

The Hadoop client (``HadoopStreaming ... -background``) exits as soon as YARN has accepted the
application, so no JVM waits beside the job. Waiting is then either this module's :func:`wait`
(the CLI and a task that does not defer: a progress line every few seconds, from the
ApplicationMaster's ``/ws/v1/mapreduce/jobs`` behind the RM proxy) or the Airflow trigger in
``kmeans_plugin.triggers``, which polls the same URL from the triggerer, asynchronously, with the
same :func:`state_of` and :func:`progress_of` read here. Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import time

from .. import settings

log = logging.getLogger(__name__)

#: YARN application states after which nothing changes.
FINAL_STATES = ("FINISHED", "FAILED", "KILLED")


class HadoopJobError(RuntimeError):
    """A MapReduce job failed; the message has its application id, tracking URL and task stderr."""


def rm_address() -> str:
    """The ResourceManager's web address (``http://host:port``), from the client configuration."""
    from .hadoop import conf_value

    address = conf_value("yarn.resourcemanager.webapp.address")
    if not address:
        host = conf_value("yarn.resourcemanager.hostname") or "127.0.0.1"
        address = f"{host}:8088"
    return address if address.startswith("http") else f"http://{address}"


def app_url(rm: str, application_id: str) -> str:
    return f"{rm}/ws/v1/cluster/apps/{application_id}"


def progress_url(rm: str, application_id: str) -> str:
    """The MapReduce ApplicationMaster's jobs (map and reduce percentages), through the RM proxy."""
    return f"{rm}/proxy/{application_id}/ws/v1/mapreduce/jobs"


def state_of(app: dict) -> str:
    """"running" while the application may still change; else "succeeded" or "failed"."""
    if app.get("state") not in FINAL_STATES:
        return "running"
    return "succeeded" if app.get("state") == "FINISHED" and app.get("finalStatus") == "SUCCEEDED" else "failed"


def progress_of(app: dict, jobs: dict | None = None) -> str:
    """One line: the application's state and, while the ApplicationMaster answers, map and reduce
    percentages (``map 100% reduce 33%``)."""
    parts = [str(app.get("state", "?")).lower()]
    for job in ((jobs or {}).get("jobs") or {}).get("job") or []:
        parts.append(f"map {float(job.get('mapProgress', 0)):.0f}% reduce {float(job.get('reduceProgress', 0)):.0f}%")
        break
    else:
        if app.get("progress") is not None:
            parts.append(f"{float(app['progress']):.0f}%")
    return ", ".join(parts)


def summary_of(app: dict) -> str:
    """The one line of a finished application: its final status and YARN's diagnostics."""
    diagnostics = " ".join(str(app.get("diagnostics") or "").split())[:300]
    return f"{app.get('state')}/{app.get('finalStatus')}" + (f": {diagnostics}" if diagnostics else "")


def submit(client: list[str] | Submitter, args: list[str], env: dict, timeout: float, what: str) -> dict:
    """Submit one streaming job (``args``: generic, then streaming options; ``-background`` is
    added here) and return it once YARN has accepted it: ``{"application_id", "job_id",
    "tracking_url", "submitted_at", "rm"}``. ``client``: a :class:`Submitter` (a client JVM kept
    for the run), or the command that starts a client for this job alone. HadoopJobError when
    the client fails or names no application."""
    started = time.time()
    if isinstance(client, Submitter):
        app_id, url = client.submit(args + ["-background"], timeout, what)
    else:
        try:
            done = subprocess.run(client + args + ["-background"], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as err:
            raise HadoopJobError(f"{what}: the Hadoop client did not submit the job in {timeout:.0f}s") from err
        client_log = done.stderr + done.stdout
        app = re.search(r"Submitted application (application_\d+_\d+)", client_log)
        found = re.search(r"url to track the job: (\S+)", client_log)
        if done.returncode != 0 or not app:
            raise HadoopJobError(f"{what}: the Hadoop client could not submit the job (exit {done.returncode}); "
                                 f"application (none: failed before YARN accepted it)\n{_tail(client_log)}")
        app_id, url = app.group(1), found.group(1) if found else ""
    log.info("%s: submitted %s in %.1f s (%s)", what, app_id, time.time() - started, url)
    return {"application_id": app_id, "job_id": app_id.replace("application_", "job_"), "tracking_url": url,
            "submitted_at": started, "rm": rm_address()}


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


#: Shipped inside the package (package data), compiled where the client runs.
SUBMITTER_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "KMeansSubmitter.java")


class Submitter:
    """One Hadoop client JVM for all the jobs of a run (kmeans_ops/engines/KMeansSubmitter.java): a
    job is one line of arguments on its stdin, answered by ``OK <app id> <url>`` or ``ERR``.
    Starting a client JVM per job costs 2-3 s on a small machine; the class is compiled once per
    Hadoop class path (javac of the client's JDK) into the temporary folder. The JVM ends when
    this process does (its stdin closes)."""

    def __init__(self, java: str, jvm_options: list[str], class_path: str, env: dict):
        self.classes = self._compiled(java, class_path)
        self.log_file = tempfile.TemporaryFile(prefix="kmeans-submitter-")
        self.process = subprocess.Popen([java, *jvm_options, "-cp", f"{self.classes}:{class_path}", "KMeansSubmitter"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log_file,
                                        env=env, text=True, bufsize=1)

    @staticmethod
    def available(java: str) -> bool:
        return os.path.exists(os.path.join(os.path.dirname(java), "javac")) and os.path.exists(SUBMITTER_SOURCE)

    @staticmethod
    def _compiled(java: str, class_path: str) -> str:
        import hashlib
        import shutil

        with open(SUBMITTER_SOURCE, "rb") as handle:
            digest = hashlib.sha256(handle.read() + class_path.encode()).hexdigest()[:16]
        folder = os.path.join(tempfile.gettempdir(), f"kmeans-submitter-{os.getuid()}-{digest}")
        if not os.path.exists(os.path.join(folder, "KMeansSubmitter.class")):
            build = tempfile.mkdtemp(prefix=".kmeans-submitter-build-", dir=tempfile.gettempdir())
            done = subprocess.run([os.path.join(os.path.dirname(java), "javac"), "-nowarn", "-cp", class_path,
                                   "-d", build, SUBMITTER_SOURCE], capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                shutil.rmtree(build, ignore_errors=True)
                raise HadoopJobError(f"could not compile {SUBMITTER_SOURCE}:\n{_tail(done.stderr)}")
            try:
                os.rename(build, folder)
            except OSError:  # another process compiled it meanwhile
                shutil.rmtree(build, ignore_errors=True)
        return folder

    def submit(self, args: list[str], timeout: float, what: str) -> tuple[str, str]:
        import select

        if any("\t" in a or "\n" in a for a in args):
            raise HadoopJobError(f"{what}: a job argument holds a tab or a line break")
        start = self.log_file.seek(0, os.SEEK_END)
        try:
            self.process.stdin.write("\t".join(args) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise HadoopJobError(f"{what}: the Hadoop client JVM has exited\n{self._log(start)}") from None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        answer = self.process.stdout.readline().rstrip("\n") if ready else ""
        fields = answer.split("\t")
        if fields[0] == "OK" and len(fields) == 3:
            return fields[1], fields[2]
        problem = "did not submit the job in time" if not ready else f"could not submit the job ({answer or 'exited'})"
        raise HadoopJobError(f"{what}: the Hadoop client {problem}; application (none: failed before YARN accepted "
                             f"it)\n{self._log(start)}")

    def _log(self, start: int) -> str:
        self.log_file.seek(start)
        return _tail(self.log_file.read().decode("utf-8", "replace"))


def _get(url: str) -> dict:
    import requests

    response = requests.get(url, headers={"Accept": "application/json"}, timeout=10)
    response.raise_for_status()
    return response.json()


def report(rm: str, application_id: str) -> dict:
    return _get(app_url(rm, application_id))["app"]


def job_progress(rm: str, application_id: str) -> dict | None:
    """The ApplicationMaster's jobs, or None while it does not answer (starting, or gone)."""
    try:
        return _get(progress_url(rm, application_id))
    except Exception:  # noqa: BLE001 - no AM yet, or the app is over: the RM's own progress is used
        return None


def wait(job: dict, what: str, timeout: float, poll: float | None = None, say=None) -> dict:
    """Poll the ResourceManager until the job's application is over; a progress line (``say``,
    default the log) every ``settings.yarn_progress_seconds()`` and at each change of state.
    Returns the final application report; HadoopJobError when it did not finish in ``timeout``."""
    say = say or log.info
    poll = settings.yarn_poll_seconds() if poll is None else poll
    every = settings.yarn_progress_seconds()
    rm, app_id = job["rm"], job["application_id"]
    deadline, shown_at, shown = time.time() + timeout, 0.0, None
    misses = 0
    while True:
        try:
            app = report(rm, app_id)
            misses = 0
        except Exception as err:  # noqa: BLE001 - the RM restarting: a few misses are tolerated
            misses += 1
            if misses > 20:
                raise HadoopJobError(f"{what}: the ResourceManager {rm} stopped answering about {app_id}: {err}") from None
            time.sleep(max(poll, 1.0))
            continue
        state = state_of(app)
        if state != "running":
            say(f"{what}: {app_id} {summary_of(app)} after {time.time() - job['submitted_at']:.1f} s")
            return app
        now = time.time()
        if app.get("state") != shown or now - shown_at >= every:
            say(f"{what}: {app_id} {progress_of(app, job_progress(rm, app_id) if app.get('state') == 'RUNNING' else None)}")
            shown, shown_at = app.get("state"), now
        if now > deadline:
            kill(rm, app_id)
            raise HadoopJobError(f"{what}: the Hadoop job {app_id} did not finish in {timeout:.0f}s; it was killed")
        time.sleep(poll)


def kill(rm: str, application_id: str) -> None:
    """Ask the ResourceManager to kill an application (best effort: on_kill, timeouts)."""
    import requests

    try:
        requests.put(f"{app_url(rm, application_id)}/state", json={"state": "KILLED"}, timeout=10)
    except Exception as err:  # noqa: BLE001
        log.warning("could not ask %s to kill %s: %s", rm, application_id, err)
