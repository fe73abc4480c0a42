"""Every knob of the project in one place: limits, defaults, environment variables, Airflow Variables.

Nothing else in the project reads ``os.environ`` for a setting or ``Variable.get``: it calls a
function here. Values are read when asked for (not at import), so a changed environment (a test,
an Airflow worker's settings) is seen at once.

Environment (workers of Airflow, or the shell of the CLI):

=========================== ============================================== ===========================
variable                    meaning                                        default
=========================== ============================================== ===========================
KMEANS_HOME                 the project's own folder for data and results  $AIRFLOW_HOME, else ~/airflow
KMEANS_DATA_ROOT            where users drop input images                  <home>/data
KMEANS_OUTPUT_ROOT          where DAG runs publish                         <home>/kmeans-output
KMEANS_WORK_ROOT            local work areas of DAG runs                   <home>/kmeans-work
KMEANS_MAX_PIXELS           pixel budget per image (checked from header)   100000000
KMEANS_MAX_IMAGE_BYTES      byte budget per image file (before reading)    1073741824 (1 GiB)
KMEANS_MAX_TEXT_BYTES       byte budget per .txt points file               134217728 (128 MiB)
KMEANS_MAX_K_COLOURS        cap on K x distinct colours per image          600000000
KMEANS_TASK_TIMEOUT         seconds a DAG task may run (execution_timeout) 3600
KMEANS_RUN_TIMEOUT          seconds a DAG run may take (dagrun_timeout)    21600
KMEANS_ITERATION_BOUND      parse-time number of iteration groups (DAG)    30
KMEANS_ITERATIONS_PER_TASK  K-means iterations per DAG ``mapreduce`` task  10
KMEANS_HADOOP_FRAMEWORK     ``yarn`` or ``local`` (LocalJobRunner)          yarn
KMEANS_HADOOP_UBER          small jobs in uber mode (``true``/``false``)    true
KMEANS_STREAMING_PYTHON     interpreter of the streaming tasks             this Python
KMEANS_HDFS_WORK_ROOT       HDFS work areas                                /user/<login>/kmeans-work
KMEANS_HADOOP_TIMEOUT       seconds a Hadoop job may take                  1800
KMEANS_HDFS_RETRIES         retries of a transient HDFS error              4
KMEANS_IMAGES_PER_TASK      images per map task, ingest/reconstruct jobs   4
KMEANS_HADOOP_KEEP_CLIENT   one Hadoop client JVM for all jobs of a run    true
KMEANS_YARN_POLL_MS         how often a waiting client asks the RM (ms)    250
KMEANS_YARN_PROGRESS_S      seconds between progress lines of a job        5
KMEANS_WEBHDFS_URL          WebHDFS of a task on a node (set by the job)   unset: the Airflow connection
KMEANS_WEBHDFS_USER         its user (set by the job)                      the login running the task
HADOOP_HOME                 a Hadoop install (its ``bin/hadoop jar``)      unset: the dev cluster's jars
HADOOP_CONF_DIR             the cluster's client configuration             <dev dir>/conf
HADOOP_DEV_DIR              what ``bin/hadoop-dev`` writes                 <checkout>/.hadoop-dev
HADOOP_DEV_JARS             class path glob of the Hadoop jars             <dev dir>/jars/*
JAVA_HOME                   the JDK of the Hadoop client                   from ``java`` on PATH
=========================== ============================================== ===========================

Airflow Variables (Admin -> Variables, or ``AIRFLOW_VAR_<NAME>``): ``kmeans_allowed_roots``,
``kmeans_landing_roots``, ``kmeans_nightly_defaults``, ``kmeans_ledger_path``. Airflow connection
``kmeans_airflow_api`` (``AIRFLOW_CONN_KMEANS_AIRFLOW_API``): the REST API the publish task reads
its run's task instances from, for the report's waiting and running per stage.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

#: The checkout (the folder holding kmeans_ops/): bin/hadoop-dev writes .hadoop-dev/ here.
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------ run parameters: limits, defaults
DEFAULT_K = 16
#: Largest K anywhere (CLI and DAG). The map kernel holds a (K x 16384) float64 block: 512 MB at 4096.
MAX_K = 4096
DEFAULT_DELTA = 1.0
#: Upper bound on ``delta``. The seed used delta = 1e8, so every run "converged" after one step.
#: A tolerance above an eighth of the channel range says "stop before you started", so it is refused.
MAX_DELTA = 32.0
DEFAULT_MAX_ITER = 30
MAX_ITER = 1000
INIT_METHODS = ("kmeans++", "random")
#: ``palette``: "image" (each image its own K colours, the seed's behaviour) or "run" (one palette
#: for all the images of the run); anything else is the path of a fixed palette (a clusters file).
PALETTE_MODES = ("image", "run")
#: ``dither``: none, or Floyd-Steinberg error diffusion (Pillow's, in C), which needs at most
#: MAX_DITHER_K colours (Pillow's palette size).
DITHER_METHODS = ("none", "floyd-steinberg")
MAX_DITHER_K = 256
DEFAULT_SEED = 0
MAX_SEED = 2**32 - 1
#: Largest clusters file read as ``init`` (a K of 4096 takes about 300 kB).
MAX_INIT_FILE_BYTES = 16 << 20
DEFAULT_BATCH_SIZE = 64
#: DAG: K-means iterations one ``mapreduce`` task of the embedded engine runs (KMEANS_ITERATIONS_PER_TASK).
DEFAULT_ITERATIONS_PER_TASK = 10
MAX_BATCH_SIZE = 10000
#: ``k`` "auto": per image the fewest colours whose PSNR reaches the ``quality`` target (kmeans_ops.search).
K_AUTO = "auto"
#: Largest K the search tries (``max_k``), by default: a PNG palette's 256 colours.
DEFAULT_MAX_K_AUTO = 256
#: ``quality`` "MIN-MAX" in PSNR dB: both within these bounds (an 8-bit image's PSNR with one
#: wrong unit in every channel of every pixel is 48.1 dB; 100 dB is a few pixels off by one).
MIN_QUALITY_DB, MAX_QUALITY_DB = 1.0, 100.0

#: Pixel budget per image: ~21 bytes per pixel at peak (decoded image, codes, sort, output), so
#: 100 MP stays near 2 GB; a 50 MP photo takes about 1 GB.
DEFAULT_MAX_PIXELS = 100_000_000
#: Byte budget of an image file, checked before it is read (a 100 MP 16-bit RGBA TIFF is 800 MB).
DEFAULT_MAX_IMAGE_BYTES = 1 << 30
#: Byte budget of a seed points file (.txt), checked before it is read: parsing peaks near 18 times
#: the file's size, so 128 MiB (about 9 M points) stays near 2.3 GB.
DEFAULT_MAX_TEXT_BYTES = 128 << 20
#: Cap on K x distinct colours of one image (or of a shared palette's union), checked once the
#: colour table is built and before k-means++ or any iteration: each iteration (and k-means++)
#: costs about K x colours distance computations, 18 s per iteration at 1e9 on this 2-core
#: machine. 6e8 takes a 50 MP photo (up to 2.3 M distinct colours) at K=256.
DEFAULT_MAX_K_COLOURS = 600_000_000
#: DAG bounds: any task (execution_timeout) and a whole run (dagrun_timeout). A 50 MP photo (2 M
#: distinct colours) at K=256 took 90 s end to end through the CLI on a busy 2-core machine (5 to 7 s
#: per iteration), so an hour per task is comfortable; a run of many batches has 6 hours.
DEFAULT_TASK_TIMEOUT = 3600
DEFAULT_RUN_TIMEOUT = 6 * 3600
#: Nightly: a landed file is taken once its size and mtime have not changed for this long.
DEFAULT_SETTLE_SECONDS = 300
#: CLI: decoded images (and colour tables) up to this many bytes stay in memory between ingest and
#: reconstruction instead of being decoded again.
KEEP_BYTES = 512 << 20
#: DAG: ingest and reconstruction run as at most this many mapped tasks per run, each on a batch of
#: at least MIN_IMAGES_PER_TASK images (a task costs seconds of scheduling: batch the cheap work).
MAX_STAGE_TASKS = 8
#: DAG: MapReduce jobs (mapped tasks) per iteration at most; batch_size is raised to stay below.
MAX_JOBS_PER_ITERATION = 256
MIN_IMAGES_PER_TASK = 3
#: Nightly: files per triggered run (a bigger folder gives several runs) and runs per night.
MAX_FILES_PER_RUN = 500
MAX_RUNS_PER_NIGHT = 200

# ------------------------------------------------------------------ Airflow Variables (names)
VAR_ALLOWED_ROOTS = "kmeans_allowed_roots"
VAR_LANDING_ROOTS = "kmeans_landing_roots"
VAR_NIGHTLY_DEFAULTS = "kmeans_nightly_defaults"
VAR_LEDGER = "kmeans_ledger_path"
#: The Airflow connection (http: host, port, login, password of a read-only user) of the REST API
#: the publish task reads its run's task instances from (kmeans_plugin.timings).
API_CONN_ID = "kmeans_airflow_api"


class SettingError(ValueError):
    """A setting (environment variable or Airflow Variable) is unusable; the message names it."""


def env(name: str, default: str | None = None) -> str | None:
    """An environment variable; empty counts as unset."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = env(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingError(f"environment variable {name} must be >= {minimum}, got {value}")
    return value


# ------------------------------------------------------------------ folders
def airflow_home() -> str:
    return env("AIRFLOW_HOME") or os.path.expanduser("~/airflow")


def home() -> str:
    """The project's own folder for data, results and work areas (KMEANS_HOME, else AIRFLOW_HOME)."""
    return os.path.abspath(os.path.expanduser(env("KMEANS_HOME") or airflow_home()))


def data_root() -> str:
    return os.path.abspath(os.path.expanduser(env("KMEANS_DATA_ROOT") or os.path.join(home(), "data")))


def output_root() -> str:
    return os.path.abspath(os.path.expanduser(env("KMEANS_OUTPUT_ROOT") or os.path.join(home(), "kmeans-output")))


def work_root() -> str:
    return os.path.abspath(os.path.expanduser(env("KMEANS_WORK_ROOT") or os.path.join(home(), "kmeans-work")))


def max_pixels() -> int:
    return env_int("KMEANS_MAX_PIXELS", DEFAULT_MAX_PIXELS, minimum=1)


def max_image_bytes() -> int:
    return env_int("KMEANS_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, minimum=1)


def max_text_bytes() -> int:
    return env_int("KMEANS_MAX_TEXT_BYTES", DEFAULT_MAX_TEXT_BYTES, minimum=1)


def max_k_colours() -> int:
    return env_int("KMEANS_MAX_K_COLOURS", DEFAULT_MAX_K_COLOURS, minimum=1)


def task_timeout() -> float:
    """Seconds any task of the DAGs may run (their ``execution_timeout``)."""
    return float(env_int("KMEANS_TASK_TIMEOUT", DEFAULT_TASK_TIMEOUT, minimum=1))


def run_timeout() -> float:
    """Seconds a run of kmeans_image_clustering may take (its ``dagrun_timeout``)."""
    return float(env_int("KMEANS_RUN_TIMEOUT", DEFAULT_RUN_TIMEOUT, minimum=1))


def iteration_bound() -> int:
    """Parse-time number of iteration groups (``iteration_NN``) of kmeans_image_clustering: at least
    DEFAULT_MAX_ITER, so ``max_iterations`` up to that many is always possible."""
    return max(DEFAULT_MAX_ITER, env_int("KMEANS_ITERATION_BOUND", DEFAULT_MAX_ITER, minimum=1))


def iterations_per_task() -> int:
    """The default of kmeans_image_clustering's ``iterations_per_task`` param (read where the DAG
    file is parsed): how many K-means iterations one ``mapreduce`` task of the embedded engine runs
    back to back, in its process, each image stopping when it converged or at ``max_iterations``.
    Group ``iteration_NN`` then runs iterations (NN-1)*N+1 to NN*N. Every task instance costs about
    a second of scheduling and process start, the embedded engine's iteration milliseconds: 10
    makes a run of 21 iterations 6 iteration tasks instead of 42, and the default max_iterations
    (30) at most 3 groups (docs/benchmarks.md). With the Hadoop
    engine every task runs one iteration (one YARN job, which a deferrable task waits for in the
    triggerer) whatever this says. 1: one iteration per task, one task per iteration."""
    return env_int("KMEANS_ITERATIONS_PER_TASK", DEFAULT_ITERATIONS_PER_TASK, minimum=1)


# ------------------------------------------------------------------ Hadoop and HDFS
def hadoop_dev_dir() -> str:
    return env("HADOOP_DEV_DIR") or os.path.join(PROJECT_DIR, ".hadoop-dev")


def hadoop_conf_dir() -> str:
    return env("HADOOP_CONF_DIR") or os.path.join(hadoop_dev_dir(), "conf")


def hadoop_home() -> str | None:
    return env("HADOOP_HOME")


def hadoop_dev_jars() -> str:
    return env("HADOOP_DEV_JARS") or os.path.join(hadoop_dev_dir(), "jars", "*")


def java_home() -> str:
    return env("JAVA_HOME") or os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("java") or "/usr/bin/java")))


def hadoop_framework() -> str:
    framework = env("KMEANS_HADOOP_FRAMEWORK", "yarn")
    if framework not in ("yarn", "local"):
        raise SettingError(f"KMEANS_HADOOP_FRAMEWORK must be 'yarn' or 'local', got {framework!r}")
    return framework


def hadoop_uber() -> bool:
    """Whether small jobs run in MapReduce's uber mode (tasks inside the ApplicationMaster)."""
    value = env("KMEANS_HADOOP_UBER", "true").lower()
    if value not in ("true", "false"):
        raise SettingError(f"KMEANS_HADOOP_UBER must be 'true' or 'false', got {value!r}")
    return value == "true"


def hadoop_keep_client() -> bool:
    """Whether the Hadoop engine keeps one client JVM for all the jobs of a process
    (kmeans_ops/engines/KMeansSubmitter.java) instead of starting one per job."""
    value = env("KMEANS_HADOOP_KEEP_CLIENT", "true").lower()
    if value not in ("true", "false"):
        raise SettingError(f"KMEANS_HADOOP_KEEP_CLIENT must be 'true' or 'false', got {value!r}")
    return value == "true"


def streaming_python() -> str:
    return env("KMEANS_STREAMING_PYTHON") or sys.executable


def hadoop_timeout() -> float:
    return float(env_int("KMEANS_HADOOP_TIMEOUT", 1800, minimum=1))


def hdfs_work_root() -> str | None:
    """KMEANS_HDFS_WORK_ROOT, or None: the engine then uses /user/<login>/kmeans-work."""
    return env("KMEANS_HDFS_WORK_ROOT")


def hdfs_retries() -> int:
    return env_int("KMEANS_HDFS_RETRIES", 4)


def hadoop_images_per_map() -> int:
    """Images per map task of an ingest or reconstruct job on the cluster (NLineInputFormat): a
    batch of up to 9 tasks runs in uber mode; more images spread over more task containers."""
    return env_int("KMEANS_IMAGES_PER_TASK", 4, minimum=1)


def yarn_poll_seconds() -> float:
    """How often a client waiting on a YARN application asks the ResourceManager (the Hadoop
    client's own default is every 5 s: a job that ends just after a poll costs up to 5 s more)."""
    return env_int("KMEANS_YARN_POLL_MS", 250, minimum=10) / 1000


def yarn_progress_seconds() -> float:
    """Seconds between two progress lines of a running job in the log (and at each change of state)."""
    return float(env_int("KMEANS_YARN_PROGRESS_S", 5, minimum=1))


def yarn_settle_seconds() -> float:
    """Seconds a deferred task's trigger holds back the end of a job that did not succeed, counted
    from the trigger's start: a job killed or failed within a second or two of the deferral can end
    before Airflow's scheduler has taken in the deferring process's own exit, which it then takes
    for the resumed try's and fails that try as "state changed externally" (apache/airflow#72716,
    open), instead of letting it fail with its own message. 0 turns the hold off."""
    return float(env_int("KMEANS_YARN_SETTLE_S", 10, minimum=0))


def node_webhdfs() -> tuple[str, str] | None:
    """(WebHDFS URL, user) that a Hadoop task uses on a node, where no Airflow connection exists:
    the job passes them (-cmdenv KMEANS_WEBHDFS_URL=..., KMEANS_WEBHDFS_USER=...). None elsewhere."""
    url = env("KMEANS_WEBHDFS_URL")
    if not url:
        return None
    import getpass

    return url, env("KMEANS_WEBHDFS_USER") or getpass.getuser()


def webhdfs_dev_connection() -> str | None:
    """The connection JSON of the dev cluster's WebHDFS when nothing else configures one and
    ``bin/hadoop-dev up`` has written its configuration; else None."""
    if env("AIRFLOW_CONN_WEBHDFS_DEFAULT") or not os.path.exists(os.path.join(hadoop_dev_dir(), "conf", "core-site.xml")):
        return None
    import getpass

    return json.dumps({"conn_type": "webhdfs", "host": "127.0.0.1", "port": 9870, "login": getpass.getuser()})


# ------------------------------------------------------------------ Airflow Variables
def variable(name: str) -> str | None:
    """An Airflow Variable's raw value, or None when unset. ``AIRFLOW_VAR_<NAME>`` is read first (as
    Airflow itself does), so the CLI and tests see the same value without a metadata database."""
    value = env(f"AIRFLOW_VAR_{name.upper()}")
    if value is not None:
        return value
    try:
        from airflow.sdk import Variable
    except ImportError:  # no Airflow: only the environment
        return None
    try:
        value = Variable.get(name, default=None)
    except Exception:  # noqa: BLE001 - outside a task there is no API to ask: the variable is unset
        return None
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def json_variable(name: str, expected: type, example: str):
    """The Variable ``name`` parsed as JSON of type ``expected``, or None when it is not set."""
    raw = variable(name)
    if raw is None:
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as err:
        raise SettingError(f"Variable {name} is not valid JSON ({err.msg} at character {err.pos}); "
                           f"expected e.g. {example}") from None
    if not isinstance(value, expected):
        raise SettingError(f"Variable {name} must be a JSON {expected.__name__}, e.g. {example}")
    return value


def allowed_roots() -> tuple[list[str], str]:
    """The folders (local or ``hdfs://``) that DAG params and nightly configuration may name, and
    where that list came from (for messages). Unset: the project's data and output folders."""
    roots = json_variable(VAR_ALLOWED_ROOTS, list, '["/data/images", "hdfs://namenode:8020/landing"]')
    if roots is None:
        return [data_root(), output_root()], (
            f"the default (Variable {VAR_ALLOWED_ROOTS} is not set: the project's data and output folders)")
    for root in roots:
        if not isinstance(root, str) or not (root.lower().startswith("hdfs://") or os.path.isabs(os.path.expanduser(root))):
            raise SettingError(f"Variable {VAR_ALLOWED_ROOTS}: every entry must be an absolute folder or an "
                               f"hdfs:// URL; entry {roots.index(root) + 1} is not")
    return list(roots), f"Variable {VAR_ALLOWED_ROOTS}"


def ledger_path() -> str:
    raw = variable(VAR_LEDGER)
    return os.path.abspath(os.path.expanduser(raw.strip() if raw else os.path.join(home(), "kmeans-ledger.json")))
