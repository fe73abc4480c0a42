"""The Hadoop engine: each iteration is one Hadoop Streaming job for a batch of images, data in HDFS.

- The mapper, combiner and reducer are ``python -m kmeans_ops.streaming map|combine|reduce``, thin
  adapters over the same kmeans_ops.mapreduce functions as the embedded engine. The package itself
  travels with the job as ``kmeans_ops.zip`` and the current centroids as ``centroids.tsv``, both
  through the distributed cache (``-files``); the nodes need Python 3 with NumPy.
- A batch of N images is one job per iteration (its input is the N points files).
- Submission uses Hadoop's own client: ``$HADOOP_HOME/bin/hadoop jar <streaming jar>`` when
  HADOOP_HOME is set, else ``java -cp <conf>:<jars>/* org.apache.hadoop.streaming.HadoopStreaming``
  with the jars of ``bin/hadoop-dev`` (``.hadoop-dev/jars``) and HADOOP_CONF_DIR (default
  ``.hadoop-dev/conf``).
- A failed job raises :class:`HadoopJobError` with the YARN application id, its tracking URL and the
  tail of the failing task's stderr (read from the JobHistory and NodeManager REST APIs).

Settings (kmeans_ops.settings): HADOOP_HOME, HADOOP_CONF_DIR, HADOOP_DEV_DIR, HADOOP_DEV_JARS,
JAVA_HOME, KMEANS_HADOOP_FRAMEWORK ("yarn", the default, or "local" for LocalJobRunner against the
same HDFS), KMEANS_STREAMING_PYTHON, KMEANS_HDFS_WORK_ROOT, KMEANS_HADOOP_TIMEOUT.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import zipfile

from .. import settings
from ..formats import format_clusters, parse_clusters
from ..workarea import WorkArea
from .base import Engine

log = logging.getLogger(__name__)
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAVA_OPENS = ["-XX:+IgnoreUnrecognizedVMOptions"] + [
    f"--add-opens=java.base/{p}=ALL-UNNAMED"
    for p in ("java.lang", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util",
              "java.util.concurrent", "java.util.zip", "java.math", "java.text", "sun.nio.ch",
              "sun.security.util", "sun.security.x509")
] + ["--add-exports=java.base/sun.net.dns=ALL-UNNAMED", "--add-exports=java.base/sun.net.util=ALL-UNNAMED"]


class HadoopJobError(RuntimeError):
    """A MapReduce job failed; the message has its application id, tracking URL and task stderr."""


def conf_value(name: str, default: str | None = None) -> str | None:
    """A property from the client configuration's *-site.xml files."""
    import xml.etree.ElementTree as ET

    for path in glob.glob(os.path.join(settings.hadoop_conf_dir(), "*-site.xml")):
        try:
            for prop in ET.parse(path).getroot().iter("property"):
                if prop.findtext("name") == name:
                    return prop.findtext("value")
        except ET.ParseError:
            continue
    return default


def client_command() -> list[str]:
    """How to start Hadoop Streaming here (see the module docstring)."""
    hadoop_home = settings.hadoop_home()
    if hadoop_home and os.path.exists(os.path.join(hadoop_home, "bin", "hadoop")):
        jars = sorted(glob.glob(os.path.join(hadoop_home, "share", "hadoop", "tools", "lib", "hadoop-streaming-*.jar")))
        if not jars:
            raise HadoopJobError(f"no hadoop-streaming jar under {hadoop_home}/share/hadoop/tools/lib")
        return [os.path.join(hadoop_home, "bin", "hadoop"), "jar", jars[-1]]
    jars = settings.hadoop_dev_jars()
    if not glob.glob(jars):
        raise HadoopJobError(
            "no Hadoop client found: set HADOOP_HOME to a Hadoop install, or run `bin/hadoop-dev up` "
            f"(looked for jars in {jars})"
        )
    java = os.path.join(settings.java_home(), "bin", "java")
    return [java, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", *JAVA_OPENS, "-cp",
            f"{settings.hadoop_conf_dir()}:{jars}",
            "org.apache.hadoop.streaming.HadoopStreaming"]


_ZIP: bytes | None = None


def package_zip() -> bytes:
    """kmeans_ops as a zip (Python imports from it), shipped to the tasks with -files."""
    global _ZIP
    if _ZIP is None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(glob.glob(os.path.join(PACKAGE_DIR, "**", "*.py"), recursive=True)):
                archive.write(path, os.path.relpath(path, os.path.dirname(PACKAGE_DIR)))
        _ZIP = buffer.getvalue()
    return _ZIP


def _get(url: str, as_json: bool = True):
    import requests

    response = requests.get(url, headers={"Accept": "application/json" if as_json else "*/*"}, timeout=10)
    response.raise_for_status()
    return response.json() if as_json else response.text


def _as_list(value):
    return [] if value is None else value if isinstance(value, list) else [value]


def failed_task_stderr(app_id: str, tail: int = 4000) -> str:
    """The stderr tails of the failed task attempts of a YARN MapReduce job (JobHistory + NodeManager)."""
    import time

    jhs = "http://" + (conf_value("mapreduce.jobhistory.webapp.address") or "127.0.0.1:19888")
    job = app_id.replace("application_", "job_")
    out = []
    for _ in range(20):  # the history server knows the job once the AM has written its history
        try:
            tasks = _as_list(_get(f"{jhs}/ws/v1/history/mapreduce/jobs/{job}/tasks")["tasks"].get("task"))
            break
        except Exception:  # noqa: BLE001 - not there yet, or no history server
            time.sleep(1)
    else:
        return "(the task logs could not be fetched from the JobHistory server)"
    for task in tasks:
        if task.get("state") != "FAILED":
            continue
        attempts = _get(f"{jhs}/ws/v1/history/mapreduce/jobs/{job}/tasks/{task['id']}/attempts").get("taskAttempts")
        for attempt in _as_list(attempts.get("taskAttempt") if isinstance(attempts, dict) else None):
            if attempt.get("state") != "FAILED":
                continue
            node, container = attempt.get("nodeHttpAddress"), attempt.get("assignedContainerId")
            try:
                text = _get(f"http://{node}/ws/v1/node/containerlogs/{container}/stderr?size=-{tail}", as_json=False)
                text = text.split("LogContents:\n", 1)[-1].split("\nEnd of LogType", 1)[0]
            except Exception as err:  # noqa: BLE001
                text = f"(could not read the stderr of {container}: {err})"
            out.append(f"--- {attempt['id']} on {node} ({container}), stderr tail:\n{text.strip()}")
            break  # one attempt per task is enough
    return "\n".join(out) or "(no failed task attempt: see the ApplicationMaster's diagnostics)"


class HadoopEngine(Engine):
    name = "hadoop"

    def __init__(self, framework: str | None = None, python: str | None = None, timeout: float | None = None,
                 hdfs=None):
        self.framework = framework or settings.hadoop_framework()
        self.python = python or settings.streaming_python()
        self.timeout = float(timeout or settings.hadoop_timeout())
        self._hdfs = hdfs
        self._means: dict[tuple[str, str], list[float]] = {}
        self.last_job: dict = {}
        self.jobs = 0  # jobs submitted by this engine

    @property
    def hdfs(self):
        if self._hdfs is None:
            from ..hdfs import Hdfs

            self._hdfs = Hdfs()
        return self._hdfs

    # ------------------------------------------------------------ work area on HDFS
    def work_root(self) -> str:
        return settings.hdfs_work_root() or posixpath.join(self.hdfs.home(), "kmeans-work")

    def stage(self, local: WorkArea, key: str) -> WorkArea:
        """Upload a run's local work area (written by ingest) to HDFS, atomically; returns it there."""
        remote = WorkArea(posixpath.join(self.work_root(), key))
        self.hdfs.upload_dir(local.root, remote.root)
        return remote

    def fetch(self, area: WorkArea, image_id: str, local_root: str) -> WorkArea:
        """Copy one image's folder from HDFS into ``local_root`` (for reconstruction)."""
        local = WorkArea(local_root)
        target = local.image_dir(image_id)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
            self.hdfs.download(area.image_dir(image_id), os.path.join(tmp, image_id))
            if os.path.exists(target):
                shutil.rmtree(target)
            os.rename(os.path.join(tmp, image_id), target)
        return local

    def discard(self, area: WorkArea) -> None:
        self.hdfs.delete(area.root)

    # ------------------------------------------------------------ one iteration = one job
    def _mean(self, area: WorkArea, image_id: str) -> list[float]:
        key = (area.root, image_id)
        if key not in self._means:
            self._means[key] = json.loads(self.hdfs.read_bytes(area.meta(image_id)))["mean_bgr"]
        return self._means[key]

    def iterate(self, area: WorkArea, image_ids: list[str], iteration: int, delta: float) -> dict[str, dict]:
        from ..streaming import format_centroids, parse_reduce_output, utf8_lines

        centroids = {i: parse_clusters(self.hdfs.read_bytes(area.clusters(i, iteration - 1)), area.clusters(i, iteration - 1))
                     for i in image_ids}
        means = {i: self._mean(area, i) for i in image_ids}
        tag = hashlib.sha1("\n".join(image_ids).encode()).hexdigest()[:10]
        output = posixpath.join(area.root, "jobs", f"iteration-{iteration:03d}-{tag}")
        if self.hdfs.exists(output):  # a previous attempt of this task
            self.hdfs.delete(output)
        with tempfile.TemporaryDirectory(prefix="kmeans-job-") as tmp:
            cache = os.path.join(tmp, "centroids.tsv")
            with open(cache, "w", encoding="utf-8") as handle:
                handle.write(format_centroids(centroids, {i: means[i] for i in image_ids}))
            package = os.path.join(tmp, "kmeans_ops.zip")
            with open(package, "wb") as handle:
                handle.write(package_zip())
            task = f"{self.python} -m kmeans_ops.streaming"
            uber = settings.hadoop_uber() and self.framework == "yarn"
            options = ["-D", f"mapreduce.job.name=kmeans iteration {iteration} ({len(image_ids)} images)",
                       # One reducer: the shuffle carries K records per image and map task, so one
                       # reducer is never the bottleneck, and it lets a small job run in uber mode.
                       "-D", "mapreduce.job.reduces=1",
                       # Uber mode: a job small enough (at most 9 maps, input under one block) runs
                       # its tasks inside the ApplicationMaster's container instead of starting a
                       # container per task (measured: 20-27 s -> 11-13 s per iteration on the dev
                       # cluster). Larger jobs run as usual. KMEANS_HADOOP_UBER=false turns it off.
                       "-D", "mapreduce.job.ubertask.enable=true" if uber else "mapreduce.job.ubertask.enable=false",
                       # The client asks whether the job is done every 5 s by default: ask every 0.5 s.
                       "-D", "mapreduce.client.completion.pollinterval=500",
                       "-D", "mapreduce.map.maxattempts=2", "-D", "mapreduce.reduce.maxattempts=2"]
            if self.framework == "local":
                options = ["-D", "mapreduce.framework.name=local"] + options
            command = client_command() + options + [
                "-files", f"{package},{cache}",
                "-cmdenv", "PYTHONPATH=kmeans_ops.zip",
                "-input", ",".join(area.points(i) for i in image_ids),
                "-output", output,
                "-mapper", f"{task} map centroids.tsv",
                "-combiner", f"{task} combine centroids.tsv",
                "-reducer", f"{task} reduce centroids.tsv {float(delta)!r}",
            ]
            try:
                self._submit(command, iteration, len(image_ids))
            except HadoopJobError:
                if not uber:
                    raise
                # In uber mode the failing task ran inside the ApplicationMaster, whose task logs the
                # JobHistory server does not list: run the job once more in task containers, which
                # retries it the usual way and, if it fails again, gives the failing task's stderr.
                log.warning("iteration %d failed in uber mode; running it again in task containers", iteration)
                if self.hdfs.exists(output):
                    self.hdfs.delete(output)
                self._submit([o.replace("mapreduce.job.ubertask.enable=true", "mapreduce.job.ubertask.enable=false")
                              for o in command], iteration, len(image_ids))
        results = {}
        try:  # each part file holds every record of its images (partitioned by image id)
            for name in sorted(self.hdfs.list(output)):
                if name.startswith("part-"):
                    part = posixpath.join(output, name)
                    results.update(parse_reduce_output(utf8_lines(self.hdfs.read_bytes(part), part), part))
        except ValueError as err:  # names the part file and the line, never its bytes
            raise HadoopJobError(f"job {self.last_job.get('application_id')}: unusable reducer output: {err}") from None
        missing = set(image_ids) - set(results)
        if missing:
            raise HadoopJobError(f"job {self.last_job.get('application_id')} returned nothing for {sorted(missing)}")
        figures = {}
        for image_id in image_ids:
            new, stats = results[image_id]
            stats["iteration"] = iteration
            self.hdfs.write_bytes(area.clusters(image_id, iteration), format_clusters(new))
            self.hdfs.write_bytes(area.stats(image_id, iteration), json.dumps(stats).encode())
            figures[image_id] = stats
        self.hdfs.delete(output)
        return figures

    def _submit(self, command: list[str], iteration: int, n_images: int) -> None:
        env = {**os.environ}
        env.setdefault("HADOOP_CONF_DIR", settings.hadoop_conf_dir())
        log.info("submitting iteration %d (%d images): %s", iteration, n_images, " ".join(command[-14:]))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout, env=env)
        except subprocess.TimeoutExpired as err:
            raise HadoopJobError(f"iteration {iteration}: the Hadoop job did not finish in {self.timeout:.0f}s") from err
        self.jobs += 1
        client_log = done.stderr + done.stdout
        app = re.search(r"Submitted application (application_\d+_\d+)", client_log)
        url = re.search(r"url to track the job: (\S+)", client_log)
        job = re.search(r"Running job: (job_\w+)", client_log)
        self.last_job = {
            "application_id": app.group(1) if app else None,
            "job_id": job.group(1) if job else None,
            "tracking_url": url.group(1) if url and app else "",
            "framework": self.framework,
        }
        log.info("iteration %d: job %s %s (%s)", iteration, self.last_job["application_id"] or self.last_job["job_id"],
                 "succeeded" if done.returncode == 0 else "FAILED", self.last_job["tracking_url"])
        if done.returncode != 0:
            if app:
                stderr = failed_task_stderr(app.group(1))
            else:
                stderr = "\n".join(client_log.strip().splitlines()[-40:])
            raise HadoopJobError(
                f"iteration {iteration}: Hadoop Streaming job failed (exit {done.returncode}); application "
                f"{self.last_job['application_id'] or '(none: failed before or without YARN)'}, tracking URL "
                f"{self.last_job['tracking_url'] or '-'}\n{stderr}"
            )
