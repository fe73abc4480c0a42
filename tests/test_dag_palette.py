"""Issue 9 through the DAG (real Airflow, dag.test()): one palette for the run, a fixed palette
file, label maps and dithering give the same files as the CLI with the same options."""

import json
import os

import cv2
import numpy as np
import pytest

from conftest import group_of, photo_bgr, run_cli, run_dag
from test_hadoop import hadoop  # noqa: F401 - the dev cluster (started if down), a session fixture

DAG_ID = "kmeans_image_clustering"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dag-palette")
    for name in ("coffee", "chelsea", "rocket"):
        cv2.imwrite(str(folder / f"{name}.png"), photo_bgr(name)[::3, ::3])
    return folder


def task_states(dag_run) -> dict:
    return {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}


def test_shared_palette_labels_and_dither_equal_the_cli(airflow_db, photos, tmp_path):
    conf = {"input": [str(photos)], "k": 6, "seed": 2, "palette": "run", "labels": True,
            "dither": "floyd-steinberg", "output": str(tmp_path / "out")}
    dag_run = run_dag(DAG_ID, conf)
    assert dag_run.state == "success"
    folder = os.path.join(conf["output"], "latest")
    status, err = run_cli("quantize", photos, "-k", 6, "--seed", 2, "--palette", "run", "--labels",
                          "--dither", "floyd-steinberg", "--out", tmp_path / "cli", "-q")
    assert status == 0, err
    figures = {}
    for stem in ("coffee", "chelsea", "rocket"):
        dag_json = json.load(open(os.path.join(folder, f"{stem}.json")))
        cli_json = json.load(open(tmp_path / "cli" / f"{stem}.json"))
        for key in ("centroids_rgb", "initial_centroids_rgb", "iterations", "converged", "cluster_pixels", "mse"):
            assert dag_json[key] == cli_json[key], (stem, key)
        assert dag_json["palette"]["mode"] == "run" and dag_json["dither"] == "floyd-steinberg"
        for suffix in (".png", "-labels.png"):
            a = cv2.imread(os.path.join(folder, stem + suffix), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(tmp_path / "cli" / (stem + suffix)), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(a, b), (stem, suffix)
        assert dag_json["labels"] == os.path.join(os.path.realpath(folder), f"{stem}-labels.png")
        figures[stem] = dag_json
    # one palette for all: the same centroids in every image's JSON
    assert len({json.dumps(f["centroids_rgb"]) for f in figures.values()}) == 1
    # one MapReduce task per iteration group for the whole run
    states = task_states(dag_run)
    iterations = figures["coffee"]["iterations"]
    for group in sorted({group_of(i) for i in range(1, iterations + 1)}):
        jobs = [key for key in states if key[0] == f"{group}.mapreduce"]
        assert len(jobs) == 1, (group, jobs)


def test_fixed_palette_file_runs_no_iteration(airflow_db, photos, tmp_path):
    palette = tmp_path / "palette.txt"
    palette.write_text("1 20 30 40\n2 200 180 160\n3 90 140 60\n4 250 250 250\n")
    conf = {"input": [str(photos)], "k": 4, "palette": str(palette), "output": str(tmp_path / "out")}
    dag_run = run_dag(DAG_ID, conf)
    assert dag_run.state == "success"
    states = task_states(dag_run)
    assert all(state == "skipped" for (task, _), state in states.items() if task.startswith("iteration_"))
    allowed = {(40, 30, 20), (160, 180, 200), (60, 140, 90), (250, 250, 250)}  # B G R of the file, as R G B
    for stem in ("coffee", "chelsea", "rocket"):
        result = json.load(open(os.path.join(conf["output"], "latest", f"{stem}.json")))
        assert result["iterations"] == 0 and result["palette"]["mode"] == "file"
        out = cv2.imread(os.path.join(conf["output"], "latest", f"{stem}.png"))
        colours = {tuple(int(v) for v in c[::-1]) for c in np.unique(out.reshape(-1, 3), axis=0)}
        assert colours <= allowed


def test_palette_file_with_another_k_is_refused(airflow_db, photos, tmp_path):
    palette = tmp_path / "palette.txt"
    palette.write_text("1 20 30 40\n2 200 180 160\n")
    dag_run = run_dag(DAG_ID, {"input": [str(photos)], "k": 5, "palette": str(palette), "output": str(tmp_path / "out")})
    assert dag_run.state == "failed"
    assert task_states(dag_run)[("prepare", -1)] == "failed"
    assert not (tmp_path / "out").exists()


def test_shared_palette_on_hadoop_equals_the_embedded_engine(hadoop, airflow_db, photos, tmp_path, monkeypatch):
    """The DAG with the Hadoop engine (LocalJobRunner against the real HDFS): only the palette
    unit goes to HDFS, one job per iteration, and the same centroids as the embedded CLI."""
    monkeypatch.setenv("KMEANS_HADOOP_FRAMEWORK", "local")
    conf = {"input": [str(photos)], "k": 5, "seed": 4, "palette": "run", "max_iterations": 4, "engine": "hadoop",
            "output": str(tmp_path / "out")}
    dag_run = run_dag(DAG_ID, conf)
    assert dag_run.state == "success"
    status, err = run_cli("quantize", photos, "-k", 5, "--seed", 4, "--palette", "run", "--max-iter", 4,
                          "--out", tmp_path / "cli", "-q")
    assert status == 0, err
    for stem in ("coffee", "chelsea", "rocket"):
        dag_json = json.load(open(os.path.join(conf["output"], "latest", f"{stem}.json")))
        cli_json = json.load(open(tmp_path / "cli" / f"{stem}.json"))
        assert dag_json["engine"] == "hadoop"
        for key in ("centroids_rgb", "iterations", "cluster_pixels", "mse"):
            assert dag_json[key] == cli_json[key], (stem, key)
    states = task_states(dag_run)
    assert all(len([k for k in states if k[0] == f"iteration_{i:02d}.mapreduce"]) == 1
               for i in range(1, dag_json["iterations"] + 1))


def test_label_maps_never_share_a_name_with_an_image():
    """Inputs a.png and a-labels.png with label maps: a's label map would be a-labels.png, the
    other image's output; the later one takes the next free name (as the CLI does)."""
    from kmeans_ops.run import plan_images

    for paths in (["/in/a.png", "/in/a-labels.png"], ["/in/a-labels.png", "/in/a.png"]):
        stems = [image["stem"] for image in plan_images(paths, labels=True)]
        names = [name for stem in stems for name in (stem, f"{stem}-labels")]
        assert len(set(names)) == len(names), stems
    assert [i["stem"] for i in plan_images(["/in/a.png", "/in/a-labels.png"])] == ["a", "a-labels"]
