"""The kmeans_image_clustering DAG with a real Airflow (dag.test, SQLite) and the embedded engine."""

import glob
import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest

from conftest import ROOT, check_time_per_stage, group_of, load_dag, photo_bgr, run_cli, run_dag

DAG_ID = "kmeans_image_clustering"


# ------------------------------------------------------------------ import and structure
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "dags", "*.py"))))
def test_dag_file_imports_without_heavy_modules(path, airflow_db):
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {path!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "heavy = [m for m in ('cv2', 'numpy', 'sklearn', 'skimage', 'kmeans_ops.mapreduce') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.path.join(ROOT, 'plugins')}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_task_graph(airflow_db):
    dag = load_dag(DAG_ID)

    ids = set(dag.task_ids)
    assert {"prepare", "ingest", "upload", "finals", "reconstruct", "publish", "cleanup"} <= ids
    bound = max(int(t.split(".")[0].split("_")[1]) for t in ids if t.startswith("iteration_"))
    assert bound >= 30
    for i in range(1, bound + 1):
        group = f"iteration_{i:02d}"
        # an iteration is two tasks: the mapped MapReduce job and the convergence branch
        assert sorted(t for t in ids if t.startswith(group + ".")) == [f"{group}.converge", f"{group}.mapreduce"]
        assert dag.get_task(f"{group}.converge").upstream_task_ids == {f"{group}.mapreduce"}
        previous = "upload" if i == 1 else f"iteration_{i - 1:02d}.converge"
        assert dag.get_task(f"{group}.mapreduce").upstream_task_ids == {previous}  # the plan travels the chain
    # no fan-out from upload into every iteration, no join from every iteration; k auto: the search
    # step instead of the iterations (skipped when k is given)
    assert dag.get_task("upload").downstream_task_ids == {"iteration_01.mapreduce", "search"}
    assert dag.get_task("finals").upstream_task_ids == {f"iteration_{bound:02d}.converge", "search"}
    assert dag.get_task("finals").trigger_rule == "none_failed"
    # mapped: ingest and reconstruct over batches of images, one MapReduce job per batch
    for task_id in ("ingest", "reconstruct", "iteration_01.mapreduce"):
        assert type(dag.get_task(task_id)).__name__ in ("MappedOperator", "DecoratedMappedOperator")
    assert "publish" in dag.get_task("cleanup").upstream_task_ids
    assert dag.schedule is None and dag.catchup is False and dag.doc_md and dag.tags


def test_no_folder_size_maps_more_than_a_few_hundred_tasks():
    """Ingest and reconstruct: at most 8 batch tasks; an iteration: at most 256 jobs, whatever the
    batch_size (Airflow's stock max_map_length is 1024)."""
    from kmeans_ops.run import job_batches, task_batches

    ids = [f"img-{i}" for i in range(5000)]
    for size in (1, 64, 10000):
        jobs = job_batches(ids, size)
        assert len(jobs) <= 256 and sum(jobs, []) == ids
    assert len(job_batches(ids[:10], 1)) == 10  # small runs keep the batch size asked for
    groups = task_batches(ids)
    assert len(groups) == 8 and sum(groups, []) == ids
    assert len(task_batches(ids[:5])) == 1 and len(task_batches(ids[:7])) == 2


def test_params_render_a_form_with_limits(airflow_db):
    dag = load_dag(DAG_ID)
    schema = {name: param.schema for name, param in dag.params.items()}
    assert schema["k"]["minimum"] == 1 and schema["delta"]["maximum"] == 32
    assert schema["engine"]["enum"] == ["local", "hadoop"]
    assert schema["input"]["minItems"] == 1
    assert all("title" in s for s in schema.values())


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dag-input")
    cv2.imwrite(str(folder / "coffee.png"), photo_bgr("coffee")[::2, ::2])
    cv2.imwrite(str(folder / "china.jpg"), photo_bgr("china")[::2, ::2])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def run_note(dag_run) -> str | None:
    from sqlalchemy import select

    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalars(select(DagRun).where(DagRun.run_id == dag_run.run_id)).one().note


def states(dag_run):
    return {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}


def published(dag_run, output):
    from kmeans_ops.run import run_key

    return os.path.join(output, run_key(dag_run.run_id))


def test_run_equals_cli_and_reports_the_bad_image(airflow_db, inputs, tmp_path):
    conf = {"input": [str(inputs)], "k": 6, "seed": 3, "delta": 0.5, "output": str(tmp_path / "out")}
    dag_run = run_dag(DAG_ID, conf)
    assert dag_run.state == "success"
    folder = published(dag_run, conf["output"])
    assert os.path.realpath(os.path.join(conf["output"], "latest")) == os.path.realpath(folder)
    assert sorted(os.listdir(folder)) == ["china.json", "china.png", "coffee.json", "coffee.png", "report.html", "summary.json"]
    assert not [n for n in os.listdir(conf["output"]) if n.startswith(".staging")]

    status, err = run_cli("quantize", inputs, "-k", 6, "--seed", 3, "--delta", 0.5, "--out", tmp_path / "cli", "-q")
    assert status == 1 and "broken.jpg" in err
    for stem in ("china", "coffee"):
        dag_json = json.load(open(os.path.join(folder, f"{stem}.json")))
        cli_json = json.load(open(tmp_path / "cli" / f"{stem}.json"))
        for key in ("k", "iterations", "converged", "centroids_rgb", "mse", "psnr", "cluster_pixels"):
            assert dag_json[key] == cli_json[key], key
        assert [h["sse"] for h in dag_json["history"]] == [h["sse"] for h in cli_json["history"]]
        a = cv2.imread(os.path.join(folder, f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "cli" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(a, b)

    summary = json.load(open(os.path.join(folder, "summary.json")))
    assert [f["source"] for f in summary["failures"]] == [str(inputs / "broken.jpg")]
    report = open(os.path.join(folder, "report.html"), encoding="utf-8").read()
    assert "broken.jpg" in report and "china" in report
    # time per stage from the run's task instances (dag.test: read from the metadata DB)
    check_time_per_stage(folder)
    # the work area is cleaned up once published
    from kmeans_ops.run import run_key

    assert not os.path.exists(os.path.join(os.environ["KMEANS_WORK_ROOT"], run_key(dag_run.run_id)))


@pytest.mark.parametrize("max_iterations,per_task", [(1, None), (4, 1), (30, None), (7, 3)])
def test_early_exit_still_reconstructs_and_publishes(airflow_db, inputs, tmp_path, max_iterations, per_task):
    """Exit at the first, a middle and the last iteration (the default iterations per task, and one
    per task): reconstruct and publish really run. 7 at 3 per task: the third group runs iteration
    7 alone and the run stops at max_iterations exactly."""
    conf = {"input": [str(inputs / "coffee.png")], "k": 12, "init": "random", "delta": 0, "seed": 1,
            "max_iterations": max_iterations, "output": str(tmp_path / "out")}
    if per_task:
        conf["iterations_per_task"] = per_task
    dag_run = run_dag(DAG_ID, conf)
    assert dag_run.state == "success"
    st = states(dag_run)
    last = group_of(max_iterations, per_task)
    assert st[(f"{last}.converge", -1)] == "success"
    assert st[("reconstruct", 0)] == "success" and st[("publish", -1)] == "success"
    groups = int(last.split("_")[1])
    for i in range(1, groups):
        assert st[(f"iteration_{i:02d}.converge", -1)] == "success"
    for i in range(groups + 1, 31):  # every later group skipped at once by the exit
        assert st[(f"iteration_{i:02d}.converge", -1)] == "skipped"
        assert st[(f"iteration_{i:02d}.mapreduce", -1)] == "skipped"
    figures = json.load(open(os.path.join(published(dag_run, conf["output"]), "coffee.json")))
    assert figures["iterations"] == max_iterations and figures["converged"] is False
    assert run_note(dag_run) == (f"Stopped at iteration {max_iterations} (max_iterations): 0 of 1 image(s) "
                                 f"converged; published")
    assert len(figures["history"]) == max_iterations
    if per_task:  # the same as the CLI, whatever the split into tasks
        status, err = run_cli("quantize", inputs / "coffee.png", "-k", 12, "--init", "random", "--delta", 0,
                              "--seed", 1, "--max-iter", max_iterations, "--out", tmp_path / "cli", "-q")
        assert status == 0, err
        cli = json.load(open(tmp_path / "cli" / "coffee.json"))
        for key in ("iterations", "converged", "centroids_rgb", "history"):
            assert figures[key] == cli[key], key


def test_iterations_per_task_changes_no_result(airflow_db, inputs, tmp_path):
    """One iteration per task and 4 per task (images converging at different iterations, not at a
    group's end): the same centroids, iteration counts, converged flags, histories and pixels."""
    runs = {}
    for per_task in (1, 4):
        conf = {"input": [str(inputs)], "k": 6, "seed": 3, "delta": 0.5, "iterations_per_task": per_task,
                "output": str(tmp_path / f"out-{per_task}")}
        dag_run = run_dag(DAG_ID, conf)
        assert dag_run.state == "success"
        runs[per_task] = (dag_run, published(dag_run, conf["output"]))
    iterations = {}
    for stem in ("china", "coffee"):
        one, four = (json.load(open(os.path.join(runs[n][1], f"{stem}.json"))) for n in (1, 4))
        for key in ("k", "iterations", "converged", "centroids_rgb", "mse", "psnr", "cluster_pixels"):
            assert one[key] == four[key], (stem, key)
        assert [h for h in one["history"]] == [h for h in four["history"]]
        a, b = (cv2.imread(os.path.join(runs[n][1], f"{stem}.png"), cv2.IMREAD_UNCHANGED) for n in (1, 4))
        assert np.array_equal(a, b)
        iterations[stem] = one["iterations"]
    last = max(iterations.values())
    assert last > 4 and last % 4  # the run ends inside a group
    for n, (dag_run, _) in runs.items():
        st = states(dag_run)
        ran = sorted({task.split(".")[0] for (task, _), state in st.items()
                      if task.startswith("iteration_") and task.endswith(".converge") and state == "success"})
        assert ran == [f"iteration_{i:02d}" for i in range(1, -(-last // n) + 1)], (n, ran)
        assert run_note(dag_run) == f"Converged at iteration {last}: all 2 image(s); published"


def test_iterations_per_task_is_validated_naming_the_param(tmp_path):
    """prepare's check (kmeans_ops.run.plan, the same rule as the trigger form's schema) and the
    setting behind the default name what is wrong."""
    from kmeans_ops.params import ParamError, iterations_per_task
    from kmeans_ops.settings import SettingError
    from kmeans_ops import settings

    assert iterations_per_task(5) == 5 and iterations_per_task("8") == 8
    for value, message in [(0, "iterations_per_task must be between 1 and 1000, got 0"),
                           (1001, "iterations_per_task must be between 1 and 1000, got 1001"),
                           ("many", "iterations_per_task must be an integer, got 'many'"),
                           (2.5, "iterations_per_task must be an integer, got 2.5"),
                           (True, "iterations_per_task must be an integer, got True")]:
        with pytest.raises(ParamError) as err:
            iterations_per_task(value)
        assert str(err.value) == message
    from kmeans_ops.run import plan

    (tmp_path / "a.png").write_bytes(b"")
    conf = {"input": [str(tmp_path)], "k": 4, "init": "kmeans++", "seed": 0, "max_iterations": 5, "delta": 1.0,
            "engine": "local", "output": str(tmp_path / "out"), "batch_size": 4, "iterations_per_task": 0}
    with pytest.raises(ParamError, match="^iterations_per_task must be between 1 and 1000, got 0$"):
        plan(conf, "manual__x", DAG_ID)
    assert plan({**conf, "iterations_per_task": 3}, "manual__x", DAG_ID)["iterations_per_task"] == 3
    assert plan({k: v for k, v in conf.items() if k != "iterations_per_task"}, "manual__x",
                DAG_ID)["iterations_per_task"] == settings.iterations_per_task()
    os.environ["KMEANS_ITERATIONS_PER_TASK"] = "0"
    try:
        with pytest.raises(SettingError, match="KMEANS_ITERATIONS_PER_TASK must be >= 1"):
            settings.iterations_per_task()
    finally:
        del os.environ["KMEANS_ITERATIONS_PER_TASK"]


def test_exit_on_convergence_in_the_middle(airflow_db, inputs, tmp_path):
    conf = {"input": [str(inputs)], "k": 3, "delta": 2.0, "output": str(tmp_path / "out"), "batch_size": 1,
            "iterations_per_task": 1}
    dag_run = run_dag(DAG_ID, conf)
    assert dag_run.state == "success"
    results = [json.load(open(p)) for p in glob.glob(os.path.join(published(dag_run, conf["output"]), "*.json"))
               if not p.endswith("summary.json")]
    assert all(r["converged"] for r in results)
    last = max(r["iterations"] for r in results)
    assert 1 < last < 30
    st = states(dag_run)
    assert st[(f"iteration_{last:02d}.converge", -1)] == "success"
    assert st[(f"iteration_{last + 1:02d}.converge", -1)] == "skipped"
    # the run's note says at a glance which iteration exited (kmeans_plugin.listener)
    assert run_note(dag_run) == f"Converged at iteration {last}: all {len(results)} image(s); published"
    # batch_size 1: one MapReduce job per image while both move, then only the one still moving
    first = min(r["iterations"] for r in results)
    jobs = [k for k in st if k[0] == "iteration_01.mapreduce"]
    assert len(jobs) == 2
    if first < last:
        assert len([k for k in st if k[0] == f"iteration_{last:02d}.mapreduce"]) == 1


def test_all_images_failing_fails_the_run_with_reasons(airflow_db, tmp_path):
    (tmp_path / "a.jpg").write_text("not an image")
    (tmp_path / "b.png").write_bytes(b"")
    dag_run = run_dag(DAG_ID, {"input": [str(tmp_path)], "output": str(tmp_path / "out")})
    assert dag_run.state == "failed"
    st = states(dag_run)
    assert st[("upload", -1)] == "failed" and st[("publish", -1)] != "success"


def test_rerun_of_the_same_run_gives_the_same_result(airflow_db, inputs, tmp_path):
    """Clearing and re-running every task of a run (same run id) publishes the same outputs."""
    dag = load_dag(DAG_ID)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    conf = {"input": [str(inputs / "coffee.png")], "k": 5, "output": str(tmp_path / "out")}
    first = dag.test(logical_date=when, run_after=when, run_conf=conf)
    folder = published(first, conf["output"])
    first_cleanup = {ti.task_id: ti for ti in first.get_task_instances()}["cleanup"].end_date
    before = {n: open(os.path.join(folder, n), "rb").read() for n in ("coffee.png", "coffee.json")}
    second = dag.test(logical_date=when, run_after=when, run_conf=conf)
    assert second.run_id == first.run_id and second.state == "success"
    started = {ti.task_id: ti.start_date for ti in second.get_task_instances()}
    assert min(started["prepare"], started["ingest"], started["publish"]) > first_cleanup  # all ran again
    after = {n: open(os.path.join(folder, n), "rb").read() for n in ("coffee.png", "coffee.json")}
    assert after["coffee.png"] == before["coffee.png"]
    strip = lambda d: {k: v for k, v in json.loads(d).items() if k != "seconds"}  # noqa: E731
    assert strip(after["coffee.json"]) == strip(before["coffee.json"])
    assert len([n for n in os.listdir(conf["output"]) if not n.startswith(".")]) == 2  # the run folder + latest


@pytest.mark.parametrize("conf,word", [({"k": 0}, "k"), ({"delta": 100}, "delta"), ({"engine": "spark"}, "engine"),
                                       ({"input": []}, "input"), ({"iterations_per_task": 0}, "iterations_per_task")])
def test_invalid_params_are_refused(airflow_db, inputs, tmp_path, conf, word):
    """The params' JSON schema (the trigger form's) refuses them before any task runs."""
    full = {"input": [str(inputs)], "output": str(tmp_path / "out"), **conf}
    env = {**os.environ}
    done = subprocess.run([os.path.join(ROOT, "bin", "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(full)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "Invalid input for param" in done.stdout + done.stderr and word in done.stdout + done.stderr
    assert not os.path.exists(tmp_path / "out")


def test_hadoop_engine_runs_one_iteration_per_task():
    """iterations_per_task applies to an engine whose jobs run in the task's process (the
    embedded one); the Hadoop engine keeps one YARN job, one iteration, per task."""
    from kmeans_ops.engines.hadoop import HadoopEngine
    from kmeans_ops.engines.local import EmbeddedEngine
    from kmeans_ops.run import group_iterations
    from kmeans_plugin.operators import per_task_of

    assert per_task_of({"iterations_per_task": 10}, EmbeddedEngine) == 10
    assert per_task_of({"iterations_per_task": 10}, HadoopEngine) == 1
    assert per_task_of({}, EmbeddedEngine) == 1  # a plan from before the param
    assert list(group_iterations(1, 10, 30)) == list(range(1, 11))
    assert list(group_iterations(3, 3, 7)) == [7] and list(group_iterations(4, 3, 7)) == []
    assert list(group_iterations(5, 1, 30)) == [5]
