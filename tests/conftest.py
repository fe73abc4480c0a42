"""Shared fixtures: real photographs shipped by scikit-learn and scikit-image, written as files."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "plugins"))

# Airflow reads its configuration when first imported: point it at this checkout before any test
# imports it. A fresh AIRFLOW_HOME per test session, with a SQLite metadata DB migrated on first use.
if "PYTEST_AIRFLOW_HOME" not in os.environ:
    import tempfile

    os.environ["PYTEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="pytest-airflow-")
os.environ["AIRFLOW_HOME"] = os.environ["PYTEST_AIRFLOW_HOME"]
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(ROOT, "dags")
# The plugin comes from the installed package (`make setup`: pip install -e .), through its entry
# point: the plugins folder is an empty one (the checkout's plugins/ would register it twice).
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = os.path.join(os.environ["AIRFLOW_HOME"], "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["KMEANS_WORK_ROOT"] = os.path.join(os.environ["AIRFLOW_HOME"], "kmeans-work")
os.environ["KMEANS_OUTPUT_ROOT"] = os.path.join(os.environ["AIRFLOW_HOME"], "kmeans-output")


@pytest.fixture(scope="session", autouse=True)
def allowed_roots(tmp_path_factory):
    """DAG params may name this session's temporary folders, its AIRFLOW_HOME and HDFS (the Airflow
    Variable kmeans_allowed_roots, as an environment variable). Tests of the rule narrow it."""
    import json

    roots = [str(tmp_path_factory.getbasetemp()), os.environ["AIRFLOW_HOME"], "hdfs:///"]
    os.environ["AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS"] = json.dumps(roots)
    return roots

# name -> loader returning an RGB uint8 array
PHOTOS = {
    "china": lambda: __import__("sklearn.datasets", fromlist=["x"]).load_sample_image("china.jpg"),
    "flower": lambda: __import__("sklearn.datasets", fromlist=["x"]).load_sample_image("flower.jpg"),
    "astronaut": lambda: __import__("skimage.data", fromlist=["x"]).astronaut(),
    "coffee": lambda: __import__("skimage.data", fromlist=["x"]).coffee(),
    "chelsea": lambda: __import__("skimage.data", fromlist=["x"]).chelsea(),
    "rocket": lambda: __import__("skimage.data", fromlist=["x"]).rocket(),
}


def photo_bgr(name: str) -> np.ndarray:
    return np.ascontiguousarray(PHOTOS[name]()[..., ::-1])


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """A folder of real photos as JPEG (china, flower: as shipped) and PNG files."""
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        ext = ".jpg" if name in ("china", "flower") else ".png"
        cv2.imwrite(str(folder / f"{name}{ext}"), photo_bgr(name))
    return folder


def run_cli(*argv) -> tuple[int, str]:
    """Run ``python -m kmeans_ops`` in-process; returns (exit status, stderr text)."""
    import contextlib
    import io

    from kmeans_ops.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            status = exc.code
    return status, err.getvalue()


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB (SQLite) in this session's AIRFLOW_HOME."""
    import subprocess

    marker = os.path.join(os.environ["AIRFLOW_HOME"], ".migrated")
    if not os.path.exists(marker):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "airflow"), "db", "migrate"], check=True,
                       capture_output=True)
        open(marker, "w").close()
    return os.environ["AIRFLOW_HOME"]


def load_dag(dag_id: str):
    """Parse dags/ with Airflow's own DagBag and return one DAG (fails on any import error)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.path.join(ROOT, "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def run_dag(dag_id: str, conf: dict):
    """Run a whole DAG in this process with Airflow's dag.test(); returns the DagRun."""
    dag = load_dag(dag_id)
    return dag.test(run_conf=conf)


def group_of(iteration: int, per_task: int | None = None) -> str:
    """The kmeans_image_clustering group (``iteration_NN``) that runs K-means iteration
    ``iteration`` with ``per_task`` iterations per task (default: the DAG's default, the setting)."""
    from kmeans_ops import settings

    per_task = per_task or settings.iterations_per_task()
    return f"iteration_{-(-iteration // per_task):02d}"


#: The stages of a kmeans_image_clustering run, as the report's time per stage names them.
RUN_STAGES = ["prepare", "ingest", "upload", "iterations", "finals", "reconstruct", "publish"]


def check_time_per_stage(folder: str) -> list:
    """A published run's time per stage comes from its task instances: every stage of the pipeline,
    in order, with waiting >= 0 and running > 0 adding up to its span, the spans to the run's wall
    time; the report's table shows both columns. Returns summary.json's stages."""
    import json
    import re

    run = json.load(open(os.path.join(folder, "summary.json")))["run"]
    stages = run["stages"]
    assert [s[0] for s in stages] == RUN_STAGES
    for name, seconds, waiting, running in stages:
        assert waiting >= 0 and running > 0, (name, waiting, running)
        assert abs(waiting + running - seconds) < 1e-6, name
    assert abs(sum(s[1] for s in stages) - run["wall_seconds"]) < 0.05
    html = open(os.path.join(folder, "report.html"), encoding="utf-8").read()
    table = html[html.index('<table class="stages">'):]
    table = table[:table.index("</table>")]
    assert re.search(r"<th>Stage</th><th class=n>Time</th><th class=n>Waiting</th><th class=n>Running</th>", table)
    assert all(f"<td>{name}</td>" in table for name in RUN_STAGES)
    return stages
