"""The Hadoop engine: each iteration is one Hadoop Streaming job for a batch of images, data in HDFS.

- The tasks are ``python -m kmeans_ops.streaming map|reduce``, thin adapters over the same
  kmeans_ops.mapreduce functions as the embedded engine (the mapper combines in memory: no combiner
  process), and, for images in HDFS, ``ingest|reconstruct`` as map-only jobs on the nodes
  (kmeans_ops.engines.stages). The package travels with each job as ``kmeans_ops.zip`` and the
  job's own file (``centroids.tsv``, ``job.json``) through the distributed cache (``-files``).
- A batch of N images is one job per iteration (its input is the N points files; small ones share
  a map task). The reducer writes the new centroids into the work area itself (WebHDFS), so the job
  has no MapReduce output and no task waits for its commit.
- Jobs go through :meth:`HadoopEngine.submit` (the client hands the job to YARN with
  ``-background`` and returns), :meth:`~HadoopEngine.wait` (the ResourceManager's REST API,
  kmeans_ops.engines.yarn, or an Airflow trigger instead), :meth:`~HadoopEngine.retry` and
  :meth:`~HadoopEngine.collect`. The client is Hadoop's own: ``$HADOOP_HOME/bin/hadoop jar
  <streaming jar>`` when HADOOP_HOME is set, else ``java -cp <conf>:<jars>/* ...HadoopStreaming``
  with the jars of ``bin/hadoop-dev`` and HADOOP_CONF_DIR (default ``.hadoop-dev/conf``); one
  client JVM is kept for all the jobs of a process when a JDK is there (yarn.Submitter).
- A failed job raises :class:`HadoopJobError` with the YARN application id, its tracking URL and the
  tail of the failing task's stderr (read from the JobHistory and NodeManager REST APIs).

Settings (kmeans_ops.settings): HADOOP_HOME, HADOOP_CONF_DIR, HADOOP_DEV_DIR, HADOOP_DEV_JARS,
JAVA_HOME, KMEANS_HADOOP_FRAMEWORK ("yarn", the default, or "local" for LocalJobRunner against the
same HDFS), KMEANS_HADOOP_UBER, KMEANS_HADOOP_KEEP_CLIENT, KMEANS_STREAMING_PYTHON,
KMEANS_HDFS_WORK_ROOT, KMEANS_HADOOP_TIMEOUT, KMEANS_IMAGES_PER_TASK, KMEANS_YARN_POLL_MS.
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
from ..formats import parse_clusters
from ..workarea import WorkArea
from .base import Engine
from .yarn import HadoopJobError

__all__ = ["HadoopEngine", "HadoopJobError", "client_command", "conf_value", "failed_task_stderr"]

log = logging.getLogger(__name__)
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAVA_OPENS = ["-XX:+IgnoreUnrecognizedVMOptions"] + [
    f"--add-opens=java.base/{p}=ALL-UNNAMED"
    for p in ("java.lang", "java.lang.reflect", "java.io", "java.net", "java.nio", "java.util",
              "java.util.concurrent", "java.util.zip", "java.math", "java.text", "sun.nio.ch",
              "sun.security.util", "sun.security.x509")
] + ["--add-exports=java.base/sun.net.dns=ALL-UNNAMED", "--add-exports=java.base/sun.net.util=ALL-UNNAMED"]



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


#: Jobs whose tasks write their results through WebHDFS themselves: no MapReduce output, so no task
#: waits for the ApplicationMaster's permission to commit (Task.commit polls it every 1000 ms).
NO_COMMIT = ["-outputformat", "org.apache.hadoop.mapred.lib.NullOutputFormat"]
#: Largest map input of an iteration (CombineTextInputFormat): HDFS's default block size.
COMBINED_SPLIT_BYTES = 128 << 20


class HadoopEngine(Engine):
    name = "hadoop"
    remote_stages = ("ingest", "reconstruct")

    def __init__(self, framework: str | None = None, python: str | None = None, timeout: float | None = None,
                 hdfs=None):
        self.framework = framework or settings.hadoop_framework()
        self.python = python or settings.streaming_python()
        self.timeout = float(timeout or settings.hadoop_timeout())
        self._hdfs = hdfs
        self._means: dict[tuple[str, str], tuple[list[float], int]] = {}
        self._centroids: dict[tuple[str, str, int], object] = {}  # (area, image id, iteration) -> (K, 3)
        self._submitter = None  # yarn.Submitter, False when none can be kept
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

    def area_for(self, key: str) -> WorkArea:
        """The HDFS work area of run ``key`` (where cluster jobs ingest into, and stage uploads)."""
        return WorkArea(posixpath.join(self.work_root(), key))

    def stage(self, local: WorkArea, key: str) -> WorkArea:
        """Upload the images of a local work area (written by ingest in process) into run ``key``'s
        HDFS work area, each image's folder atomically, beside those a cluster job ingested there."""
        remote = self.area_for(key)
        images = os.path.join(local.root, "images")
        for image_id in sorted(os.listdir(images)) if os.path.isdir(images) else []:
            self.hdfs.upload_dir(local.image_dir(image_id), remote.image_dir(image_id))
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
    def _meta(self, area: WorkArea, image_id: str) -> tuple[list[float], int]:
        """An image's mean colour and number of pinned centroids, from its image.json (read once)."""
        key = (area.root, image_id)
        if key not in self._means:
            meta = json.loads(self.hdfs.read_bytes(area.meta(image_id)))
            self._means[key] = (meta["mean_bgr"], int(meta.get("pinned") or 0))
        return self._means[key]

    def iterate(self, area: WorkArea, image_ids: list[str], iteration: int, delta: float) -> dict[str, dict]:
        return self.run("iterate", area=area, image_ids=image_ids, iteration=iteration, delta=delta)

    def submit(self, stage: str, uber: bool | None = None, **args) -> dict:
        """Submit the job of ``stage`` ("iterate", or with images in HDFS "ingest" and "reconstruct":
        kmeans_ops.engines.stages) without waiting; returns the job once YARN has accepted it."""
        uber = settings.hadoop_uber() and self.framework == "yarn" if uber is None else uber
        if stage == "iterate":
            spec = self._iteration_spec(**args)
        else:
            from . import stages

            spec = stages.job_spec(self, stage, **args)
        job = self._launch(spec, uber)
        job.update(stage=stage, args=_jsonable(args), uber=uber)
        return job

    def _iteration_spec(self, area: WorkArea, image_ids: list[str], iteration: int, delta: float) -> dict:
        from ..streaming import format_centroids

        centroids = {i: self._centroids_of(area, i, iteration - 1) for i in image_ids}
        means = {i: self._meta(area, i)[0] for i in image_ids}
        pins = {i: self._meta(area, i)[1] for i in image_ids}
        tag = hashlib.sha1("\n".join(image_ids).encode()).hexdigest()[:10]
        output = posixpath.join(area.root, "jobs", f"iteration-{iteration:03d}-{tag}")
        return {
            "what": f"iteration {iteration}",
            "name": f"kmeans iteration {iteration} ({len(image_ids)} images)",
            "inputs": [area.points(i) for i in image_ids],
            "output": output,
            "files": {"centroids.tsv": format_centroids(centroids, means, pins).encode()},
            # The mapper combines in memory (one partial record set per image per task, as Spark's
            # and Mahout's k-means do), so a combiner process would get nothing to merge: none is
            # started (three Python starts fewer per iteration of three images).
            "mapper": "map centroids.tsv",
            # the reducer writes the new centroids itself (kmeans_ops.streaming.run_reduce_to_hdfs)
            "reducer": f"reduce centroids.tsv {float(delta)!r} {area.root} {iteration} {output}",
            # One reducer: the shuffle carries K records per image and map task, so one reducer is
            # never the bottleneck, and it lets a small job run in uber mode.
            # Small points files share a map task, up to a block's worth (a batch of a few photos
            # is one map: one Python start, not one per image); larger ones still split by block.
            "options": ["-D", "mapreduce.job.reduces=1", "-D", "stream.map.input.ignoreKey=true",
                        "-D", f"mapreduce.input.fileinputformat.split.maxsize={COMBINED_SPLIT_BYTES}"],
            "streaming": ["-inputformat", "org.apache.hadoop.mapred.lib.CombineTextInputFormat", *NO_COMMIT],
            "env": self.node_env(),
        }

    def _centroids_of(self, area: WorkArea, image_id: str, iteration: int):
        """An image's centroids after ``iteration``: as the last job of this engine returned them,
        else read from the work area."""
        cached = self._centroids.pop((area.root, image_id, iteration), None)
        if cached is not None:
            return cached
        path = area.clusters(image_id, iteration)
        return parse_clusters(self.hdfs.read_bytes(path), path)

    def node_env(self) -> dict[str, str]:
        """The environment of a task on a node: how to reach HDFS without Airflow, and the budgets
        of this side (KMEANS_MAX_*), so a node refuses what the submitter would."""
        budgets = {k: v for k, v in os.environ.items() if k.startswith("KMEANS_MAX_") and v}
        return {**self.hdfs.node_env(), **budgets}

    def _launch(self, spec: dict, uber: bool) -> dict:
        """Submit one streaming job. ``spec``: ``what`` (for messages), ``name``, ``inputs``,
        ``output``, ``files`` ({name: bytes} for the distributed cache), ``mapper``, ``combiner``,
        ``reducer`` (arguments of ``python -m kmeans_ops.streaming``; no reducer: a map-only job),
        ``options`` (generic ``-D``), ``streaming`` (options of the streaming tool), ``env``."""
        from . import yarn

        output = spec["output"]
        if self.hdfs.exists(output):  # a previous attempt of this task
            self.hdfs.delete(output)
        task = f"{self.python} -m kmeans_ops.streaming"
        options = ["-D", f"mapreduce.job.name={spec['name']}",
                   # Uber mode: a job small enough (at most 9 maps, input under one block) runs its
                   # tasks inside the ApplicationMaster's container instead of starting a container
                   # per task (measured: 20-27 s -> 11-13 s per iteration on the dev cluster).
                   # Larger jobs run as usual. KMEANS_HADOOP_UBER=false turns it off.
                   "-D", f"mapreduce.job.ubertask.enable={'true' if uber else 'false'}",
                   "-D", "mapreduce.map.maxattempts=2", "-D", "mapreduce.reduce.maxattempts=2",
                   *spec.get("options", [])]
        if self.framework == "local":
            options = ["-D", "mapreduce.framework.name=local"] + options
        env = {**os.environ}
        env.setdefault("HADOOP_CONF_DIR", settings.hadoop_conf_dir())
        with tempfile.TemporaryDirectory(prefix="kmeans-job-") as tmp:
            shipped = []
            for name, data in {"kmeans_ops.zip": package_zip(), **spec["files"]}.items():
                shipped.append(os.path.join(tmp, name))
                with open(shipped[-1], "wb") as handle:
                    handle.write(data)
            command = options + ["-files", ",".join(shipped)]
            for name, value in {"PYTHONPATH": "kmeans_ops.zip", **spec.get("env", {})}.items():
                command += ["-cmdenv", f"{name}={value}"]
            command += ["-input", ",".join(spec["inputs"]), "-output", output, "-mapper", f"{task} {spec['mapper']}"]
            command += [*(["-combiner", f"{task} {spec['combiner']}"] if spec.get("combiner") else []),
                        "-reducer", f"{task} {spec['reducer']}" if spec.get("reducer") else "NONE",
                        *spec.get("streaming", [])]
            log.info("submitting %s: %s", spec["what"], " ".join(command[-12:]))
            if self.framework == "local":  # LocalJobRunner runs the job inside the client: it cannot go on alone
                job = self._run_locally(client_command() + command, env, spec["what"])
            else:  # the client hands the job to YARN (-background) and returns: waiting is wait()'s
                job = yarn.submit(self._client(env), command, env, self.timeout, spec["what"])
        self.jobs += 1
        job.update(what=spec["what"], output=output, framework=self.framework)
        self.last_job = {k: job.get(k) for k in ("application_id", "job_id", "tracking_url", "framework")}
        return job

    def _client(self, env: dict):
        """The Hadoop client of this engine's jobs: one JVM kept for all of them (yarn.Submitter)
        when the client is plain ``java`` with a JDK (the dev cluster's jars, or HADOOP_HOME's
        ``bin/hadoop classpath``), else the command that starts one per job."""
        from . import yarn

        if self._submitter is None and settings.hadoop_keep_client():
            command = client_command()
            java = command[0] if command[0].endswith("/java") else os.path.join(settings.java_home(), "bin", "java")
            try:
                if yarn.Submitter.available(java):
                    opts, class_path = _jvm_route(command, env)
                    self._submitter = yarn.Submitter(java, opts, class_path, env)
            except (HadoopJobError, OSError, subprocess.SubprocessError) as err:
                log.warning("a client JVM per job (could not keep one: %s)", str(err).splitlines()[0])
                self._submitter = False
        return self._submitter or client_command()

    def _run_locally(self, command: list[str], env: dict, what: str) -> dict:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout, env=env)
        except subprocess.TimeoutExpired as err:
            raise HadoopJobError(f"{what}: the Hadoop job did not finish in {self.timeout:.0f}s") from err
        client_log = done.stderr + done.stdout
        job = re.search(r"Running job: (job_\w+)", client_log)
        final = {"state": "FINISHED", "finalStatus": "SUCCEEDED" if done.returncode == 0 else "FAILED",
                 "diagnostics": "" if done.returncode == 0 else "\n".join(client_log.strip().splitlines()[-40:])}
        return {"application_id": None, "job_id": job.group(1) if job else None, "tracking_url": "", "final": final}

    def wait(self, job: dict, say=None) -> dict:
        from . import yarn

        if "final" not in job:
            app = yarn.wait(job, job["what"], self.timeout, say=say)
            job["final"] = {k: app.get(k) for k in ("state", "finalStatus", "diagnostics", "elapsedTime")}
        return job

    def retry(self, job: dict) -> dict | None:
        """In uber mode a failing task ran inside the ApplicationMaster, whose task logs the
        JobHistory server does not list: the job runs once more in task containers, which retries it
        the usual way and, if it fails again, gives the failing task's stderr."""
        from .yarn import state_of

        if state_of(job["final"]) == "succeeded" or not job.get("uber"):
            return None
        log.warning("%s failed in uber mode; running it again in task containers", job["what"])
        return self.submit(job["stage"], uber=False, **_areas(job["stage"], job["args"]))

    def collect(self, job: dict):
        """The job's result (reading its output), or HadoopJobError with the failing task's stderr."""
        from .yarn import state_of, summary_of

        if state_of(job["final"]) != "succeeded":
            app = job.get("application_id")
            stderr = failed_task_stderr(app) if app else job["final"].get("diagnostics", "")
            raise HadoopJobError(
                f"{job['what']}: Hadoop Streaming job failed ({summary_of(job['final']).splitlines()[0][:200]}); "
                f"application {app or '(none: LocalJobRunner)'}, tracking URL {job.get('tracking_url') or '-'}\n{stderr}")
        try:
            if job["stage"] == "iterate":
                return self._collect_iteration(job)
            from . import stages

            return stages.collect(self, job)
        finally:
            if self.hdfs.exists(job["output"]):
                self.hdfs.delete(job["output"])

    def output_parts(self, job: dict) -> list[tuple[str, list[str]]]:
        """The job's part files, in order: (path, lines)."""
        from ..streaming import utf8_lines

        parts = []
        for name in sorted(self.hdfs.list(job["output"])):
            if name.startswith("part-"):
                part = posixpath.join(job["output"], name)
                parts.append((part, utf8_lines(self.hdfs.read_bytes(part), part)))
        return parts

    def _collect_iteration(self, job: dict) -> dict[str, dict]:
        from ..streaming import parse_reduce_output

        args = job["args"]
        area, image_ids, iteration = WorkArea(args["area"]), args["image_ids"], args["iteration"]
        results = {}
        try:  # each part file holds every record of its images (partitioned by image id)
            for part, lines in self.output_parts(job):
                results.update(parse_reduce_output(lines, part))
        except ValueError as err:  # names the part file and the line, never its bytes
            raise HadoopJobError(f"job {job.get('application_id')}: unusable reducer output: {err}") from None
        missing = set(image_ids) - set(results)
        if missing:
            raise HadoopJobError(f"job {job.get('application_id')} returned nothing for {sorted(missing)}")
        figures = {}
        for image_id in image_ids:  # the reducer wrote clusters-NNN and stats-NNN (run_reduce_to_hdfs)
            new, stats = results[image_id]
            self._centroids[(area.root, image_id, iteration)] = new  # the next iteration's, unread
            figures[image_id] = {**stats, "iteration": iteration}
        return figures


def _jvm_route(command: list[str], env: dict) -> tuple[list[str], str]:
    """(JVM options, class path) of the Hadoop client ``command``: the dev route's own, or with
    HADOOP_HOME the add-opens set and ``bin/hadoop classpath``."""
    if "-cp" in command:
        at = command.index("-cp")
        return command[1:at], command[at + 1]
    done = subprocess.run([command[0], "classpath"], capture_output=True, text=True, timeout=120, env=env, check=True)
    conf = env.get("HADOOP_CONF_DIR") or settings.hadoop_conf_dir()
    return ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", *JAVA_OPENS], f"{conf}:{done.stdout.strip()}"


def _jsonable(args: dict) -> dict:
    """A job's arguments as JSON (a WorkArea becomes its root)."""
    return {k: (v.root if isinstance(v, WorkArea) else v) for k, v in args.items()}


def _areas(stage: str, args: dict) -> dict:
    """A job's JSON arguments back as keywords of submit (the work area as a WorkArea)."""
    return {k: (WorkArea(v) if k == "area" else v) for k, v in args.items()}
