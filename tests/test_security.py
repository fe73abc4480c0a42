"""Params are untrusted (issue 12): glob characters, `..` after a wildcard and symlinks whose names
hold wildcard characters never open the allowed roots; a run never replaces another run's folder;
a path on a filesystem the code does not write to is refused; runs have bounds; the small cases
(a reserved output name, two CLI runs into one folder, hostile path strings, a kill between
publication steps, native decoder messages). Real `dag.test()` runs, real CLI processes."""

import json
import os
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from conftest import ROOT, photo_bgr, run_cli, run_dag

DAG_ID = "kmeans_image_clustering"
RUN_ID = "manual__2026-01-01T00:00:00+00:00"


@pytest.fixture
def area(tmp_path, monkeypatch):
    """An allowed root with a photo; a folder outside holding a private image, a clusters file and a
    well-formed palette; symlinks inside the root whose own names hold wildcard characters."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root / "in", root / "res", root / "links", outside):
        folder.mkdir(parents=True)
    cv2.imwrite(str(root / "in" / "coffee.png"), photo_bgr("coffee")[::4, ::4])
    cv2.imwrite(str(outside / "private.png"), photo_bgr("chelsea")[::4, ::4])
    (outside / "clusters.txt").write_text("1 10 20 30\n2 200 100 50\n")
    os.symlink(outside, root / "d[1]")  # a folder symlink named like a pattern
    os.symlink(outside / "private.png", root / "links" / "p[1].png")  # a file symlink named like a pattern
    cv2.imwrite(str(root / "links" / "fine.png"), photo_bgr("rocket")[::8, ::8])
    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS", json.dumps([str(root)]))
    return root, outside


def conf_for(root, **changes):
    conf = {"input": [str(root / "in" / "coffee.png")], "k": 2, "max_iterations": 2, "output": str(root / "out")}
    return {**conf, **changes}


def stem_of(image: dict) -> str:
    """An image's output stem, from its summary entry."""
    return os.path.splitext(os.path.basename(image["output"]))[0]


def tree(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, names in os.walk(folder)
                  for n in names + dirs)


def plan_error(conf, run_id=RUN_ID) -> str:
    from kmeans_ops.errors import InputError
    from kmeans_ops.params import ParamError
    from kmeans_ops.run import plan

    defaults = {"k": 16, "init": "kmeans++", "seed": 0, "max_iterations": 30, "delta": 1.0, "engine": "local",
                "batch_size": 64}
    with pytest.raises((ParamError, InputError)) as caught:
        plan({**defaults, **conf}, run_id, DAG_ID)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ 1. one path rule, after expansion
GLOB_CASES = {
    "output: wildcard then ..": lambda r, o: {"output": f"{r}/res/*/../../../outside/written"},
    "output: ? then ..": lambda r, o: {"output": f"{r}/res/?/../../../outside/written"},
    "output: [ then ..": lambda r, o: {"output": f"{r}/res/[ab]/../../../outside/written"},
    "output: through a glob-named folder symlink": lambda r, o: {"output": f"{r}/d[1]/written"},
    "init: ? then ..": lambda r, o: {"init": f"{r}/?/../../outside/clusters.txt"},
    "init: through a glob-named folder symlink": lambda r, o: {"init": f"{r}/d[1]/clusters.txt"},
    "palette: * then ..": lambda r, o: {"palette": f"{r}/*/../../outside/clusters.txt"},
    "palette: through a glob-named folder symlink": lambda r, o: {"palette": f"{r}/d[1]/clusters.txt"},
    "input: * then ..": lambda r, o: {"input": [f"{r}/in/*/../../../outside/private.png"]},
    "input: pattern through ..": lambda r, o: {"input": [f"{r}/in/[c]*/../../../outside/*.png"]},
    "input: glob-named folder symlink": lambda r, o: {"input": [f"{r}/d[1]"]},
    "input: file in a glob-named folder symlink": lambda r, o: {"input": [f"{r}/d[1]/private.png"]},
    "input: pattern into a glob-named folder symlink": lambda r, o: {"input": [f"{r}/d*/*.png"]},
    "input: glob-named file symlink": lambda r, o: {"input": [f"{r}/links/p[1].png"]},
    "input: glob-named file symlink in a listed folder": lambda r, o: {"input": [f"{r}/links"]},
    "input: glob-named file symlink matched by a pattern": lambda r, o: {"input": [f"{r}/links/*.png"]},
    "input: pattern above the root": lambda r, o: {"input": [f"{r}/../*/private.png"]},
    "input: hdfs pattern through ..": lambda r, o: {"input": ["hdfs:///landing/*/../../etc/x.png"]},
}


@pytest.mark.parametrize("case", sorted(GLOB_CASES))
def test_wildcards_and_glob_named_symlinks_never_open_the_roots(area, case):
    root, outside = area
    changes = GLOB_CASES[case](root, outside)
    before = tree(outside), tree(root)
    message = plan_error(conf_for(root, **changes))
    param = next(iter(changes))
    assert message.startswith(f"{param}: ") or "may not hold '..'" in message
    assert ("outside the allowed roots" in message or "may not hold '..'" in message), message
    for leak in (str(outside), "private.png is", "bytes", "line ", "columns"):  # no resolved target, size or content
        assert leak not in message.replace(str(changes[param] if param != "input" else changes[param][0]), ""), message
    assert (tree(outside), tree(root)) == before


def test_a_file_param_outside_gives_the_same_message_whether_or_not_it_exists(area):
    """No existence, size or format oracle: /etc/passwd (exists, not a clusters file), a file that
    does not exist and a well-formed clusters file outside all read alike."""
    root, outside = area
    for param in ("init", "palette"):
        messages = set()
        for target in ("etc/passwd", "etc/no-such-file", f"{outside.name}/clusters.txt"):
            given = f"{root}/?/../" + "../" * (len(root.parts) - 1) + target
            if target.startswith(outside.name):
                given = f"{root}/?/../../{target}"
            messages.add(plan_error(conf_for(root, **{param: given})).replace(given, "<path>"))
        assert len(messages) == 1, messages
        (message,) = messages
        assert message.startswith(f"{param}: <path> is outside the allowed roots")


def test_init_and_palette_are_files_not_patterns(area):
    root, _ = area
    (root / "in" / "clusters.txt").write_text("1 10 20 30\n2 200 100 50\n")
    for param in ("init", "palette"):
        message = plan_error(conf_for(root, **{param: f"{root}/in/*.txt"}))
        assert message.startswith(f"{param} must be") and "readable clusters file" in message
        missing = plan_error(conf_for(root, **{param: f"{root}/in/none.txt"}))
        assert missing.replace("none.txt", "*.txt") == message  # missing and pattern alike: never expanded


def test_a_literal_name_holding_wildcards_inside_the_roots_is_used(area):
    """A real file named ``a[1].png`` inside the root is an image like any other."""
    from kmeans_ops.paths import AllowedRoots, expand

    root, _ = area
    cv2.imwrite(str(root / "in" / "a[1].png"), photo_bgr("astronaut")[::8, ::8])
    roots = AllowedRoots.from_settings()
    assert expand([f"{root}/in/a[1].png"], allowed=roots) == [f"{root}/in/a[1].png"]
    assert sorted(expand([f"{root}/in/*.png"], allowed=roots)) == [f"{root}/in/a[1].png", f"{root}/in/coffee.png"]
    assert expand([f"{root}/i?/c*.png"], allowed=roots) == [f"{root}/in/coffee.png"]  # wildcards in folders too


@pytest.mark.parametrize("case", ["output: wildcard then ..", "input: glob-named file symlink in a listed folder",
                                  "init: ? then .."])
def test_a_dag_run_through_wildcards_fails_at_prepare_and_touches_nothing(airflow_db, area, case):
    root, outside = area
    before = tree(outside), tree(root)
    dag_run = run_dag(DAG_ID, conf_for(root, **GLOB_CASES[case](root, outside)))
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "failed" and states["prepare"] == "failed"
    assert all(s in (None, "upstream_failed", "skipped") for t, s in states.items() if t != "prepare")
    assert (tree(outside), tree(root)) == before
    assert not (outside / "written").exists()


def test_nightly_landing_roots_through_wildcards_are_refused(airflow_db, area, monkeypatch):
    root, outside = area
    ledger = root / "ledger.json"
    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_LEDGER_PATH", str(ledger))
    monkeypatch.delenv("AIRFLOW_VAR_KMEANS_NIGHTLY_DEFAULTS", raising=False)
    for landing in (f"{root}/*/../../outside", f"{root}/d[1]"):
        monkeypatch.setenv("AIRFLOW_VAR_KMEANS_LANDING_ROOTS", json.dumps([landing]))
        dag_run = run_dag("kmeans_nightly", {"settle_seconds": 0})
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        assert dag_run.state == "failed" and states["scan"] == "failed", landing
        assert not ledger.exists()


# ------------------------------------------------------------------ 2. run folders that cannot be aimed at
def test_run_keys_are_unique_per_run_id_even_when_they_read_alike():
    from kmeans_ops.run import run_key

    ids = ["manual__a:b", "manual__a+b", "manual__a~b", "manual__a_b", "manual__a b"]
    keys = {run_key(i) for i in ids}
    assert len(keys) == len(ids)
    digest = run_key("x").rsplit("-", 1)[1]
    assert len(digest) == 32 and int(digest, 16) >= 0  # 128 bits
    assert run_key("manual__a:b") == run_key("manual__a:b")


def test_a_run_never_replaces_a_folder_published_by_another_run(airflow_db, area):
    """A run id whose key lands on another run's folder (as a 24-bit key allowed): the folder is
    the victim's, so the attacker's run fails at prepare and the victim's files are untouched,
    unless the param replace_published says so."""
    from kmeans_ops.run import run_key

    root, _ = area
    victim = run_dag(DAG_ID, conf_for(root))
    assert victim.state == "success"
    attacker_id = "manual__attacker"
    victim_folder = root / "out" / run_key(victim.run_id)
    aimed = root / "out" / run_key(attacker_id)
    os.rename(victim_folder, aimed)  # the victim's folder now sits where the attacker's key points
    before = {name: (aimed / name).read_bytes() for name in os.listdir(aimed)}
    message = plan_error(conf_for(root), run_id=attacker_id)
    assert message.startswith("output: ") and "published by another run" in message and "replace_published" in message

    from datetime import datetime, timezone

    from conftest import load_dag

    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    attacker_id = f"manual__{when.isoformat()}"  # the id dag.test gives a run after `when`
    aimed = root / "out" / run_key(attacker_id)
    os.rename(root / "out" / run_key("manual__attacker"), aimed)
    attacked = load_dag(DAG_ID).test(run_after=when, logical_date=when,
                                     run_conf=conf_for(root, input=[str(root / "links" / "fine.png")]))
    assert attacked.run_id == attacker_id
    assert attacked.state == "failed"
    assert {ti.task_id: ti.state for ti in attacked.get_task_instances()}["prepare"] == "failed"
    assert {name: (aimed / name).read_bytes() for name in os.listdir(aimed)} == before
    assert json.loads((aimed / "summary.json").read_text())["run"]["run_id"] == victim.run_id

    allowed = load_dag(DAG_ID).test(run_after=when, logical_date=when,  # the param says so: replaced
                                    run_conf=conf_for(root, replace_published=True))
    assert allowed.state == "success"
    assert json.loads((aimed / "summary.json").read_text())["run"]["run_id"] == attacker_id


def test_the_results_app_serves_a_folder_only_for_the_run_its_summary_names(area):
    """What an XCom editor can do: point a run's publish value at another run's folder, which then
    is not served for that run."""
    import kmeans_plugin.results as rules
    from kmeans_ops.paths import AllowedRoots
    from kmeans_ops.publish import publish

    root, _ = area
    out = root / "out"
    folder = publish(str(out), "k1", [], [], {"run_id": "run-1", "dag_id": DAG_ID})
    roots = AllowedRoots.from_settings()
    assert rules.servable_folder(folder, roots, DAG_ID, "run-1") == folder
    assert rules.servable_folder(folder, roots, DAG_ID, "run-2") is None
    assert rules.servable_folder(folder, roots, "other_dag", "run-1") is None
    assert rules.servable_folder(folder + "\0", roots, DAG_ID, "run-1") is None


# ------------------------------------------------------------------ 3. filesystems by scheme
@pytest.mark.parametrize("output", ["hdfs:///data/out", "hdfs://127.0.0.1:8020/data/out", "s3://bucket/out",
                                    "file:///tmp/out", "hdfs:/data/out"])
def test_an_output_on_a_filesystem_we_do_not_write_is_refused(area, monkeypatch, tmp_path, output):
    root, _ = area
    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS", json.dumps([str(root), "hdfs:///data"]))
    monkeypatch.chdir(tmp_path)
    message = plan_error(conf_for(root, output=output))
    assert message.startswith("output: ") and output in message
    assert "not supported" in message or "not an absolute path" in message
    assert not any(name.startswith(("hdfs", "s3", "file")) for name in os.listdir(tmp_path))


def test_a_dag_run_with_an_hdfs_output_fails_and_writes_no_local_hdfs_folder(airflow_db, area, monkeypatch, tmp_path):
    root, _ = area
    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS", json.dumps([str(root), "hdfs:///data"]))
    monkeypatch.chdir(tmp_path)
    dag_run = run_dag(DAG_ID, conf_for(root, output="hdfs:///data/out"))
    assert dag_run.state == "failed"
    assert not os.path.exists(tmp_path / "hdfs:") and not os.path.exists(os.path.join(ROOT, "hdfs:"))
    assert not os.path.exists(os.path.join(os.environ["AIRFLOW_HOME"], "hdfs:"))


@pytest.mark.parametrize("option, value", [("--out", "hdfs://127.0.0.1:8020/tmp/out"), ("--out", "s3://b/out"),
                                           ("--work", "hdfs:///tmp/work"), ("--init", "hdfs:///c.txt"),
                                           ("--palette", "s3://b/p.txt")])
def test_the_cli_refuses_a_path_on_a_filesystem_it_does_not_write(tmp_path, monkeypatch, option, value):
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), photo_bgr("coffee")[::8, ::8])
    argv = ["quantize", image, "-k", 2, "--out", tmp_path / "out"]
    if option == "--out":
        argv[-1] = value
    else:
        argv += [option, value]
    status, err = run_cli(*argv)
    assert status == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {option}: {value}") and "not supported" in line
    assert sorted(os.listdir(tmp_path)) == ["a.png"]  # no local folder named hdfs: or s3:


def test_the_cli_refuses_an_input_on_an_unknown_filesystem(tmp_path):
    status, err = run_cli("quantize", "s3://bucket/a.png", "-k", 2, "--out", tmp_path / "out")
    assert status == 2 and err.strip() == ("error: INPUT: s3://bucket/a.png names the filesystem 's3', which is not "
                                           "supported for INPUT; give a local path or an hdfs:// URL")


# ------------------------------------------------------------------ 4. and 5. bounds
def test_every_task_and_the_run_have_time_bounds_from_settings(airflow_db, monkeypatch):
    from datetime import timedelta

    from conftest import load_dag

    monkeypatch.setenv("KMEANS_TASK_TIMEOUT", "1234")
    monkeypatch.setenv("KMEANS_RUN_TIMEOUT", "4321")
    for dag_id in (DAG_ID, "kmeans_nightly"):
        dag = load_dag(dag_id)
        assert dag.dagrun_timeout == timedelta(seconds=4321)
        assert {task.execution_timeout for task in dag.tasks} == {timedelta(seconds=1234)}, dag_id


def test_the_default_bounds_fit_a_50mp_photo_at_k256():
    """The defaults are stated against the cost they bound (settings' comments)."""
    from kmeans_ops import settings

    distinct_colours_of_a_50mp_photo = 2_000_000
    assert 256 * distinct_colours_of_a_50mp_photo <= settings.DEFAULT_MAX_K_COLOURS
    assert 4096 * 250_000 > settings.DEFAULT_MAX_K_COLOURS  # the 145 s, 1.28 GB example is refused
    assert settings.DEFAULT_MAX_PIXELS >= 50_000_000


def test_k_times_colours_over_the_cap_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    photo = tmp_path / "in" / "astronaut.png"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), photo_bgr("astronaut"))
    small = tmp_path / "in" / "rocket.png"
    cv2.imwrite(str(small), photo_bgr("rocket")[::16, ::16])
    distinct = len(np.unique(photo_bgr("astronaut").reshape(-1, 3), axis=0))
    monkeypatch.setenv("KMEANS_MAX_K_COLOURS", str(64 * distinct - 1))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the work folder goes here
    status, err = run_cli("quantize", photo, small, "-k", 64, "--out", tmp_path / "out", "-q")
    assert status == 1  # the other image is done
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {photo}: k=64 x {distinct} distinct colours = {64 * distinct:.3g} exceeds the cap "
                      f"of {64 * distinct - 1:.3g} (environment variable KMEANS_MAX_K_COLOURS); lower k or raise the cap"]
    assert sorted(os.listdir(tmp_path / "out")) == ["rocket.json", "rocket.png"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith("kmeans-work-")]
    status, err = run_cli("quantize", photo, small, "-k", 64, "--palette", "run", "--out", tmp_path / "shared", "-q")
    assert status == 2 and "palette=run (the union of the run's images): k=64" in err and "KMEANS_MAX_K_COLOURS" in err


def test_k_times_colours_over_the_cap_fails_one_image_of_a_dag_batch(airflow_db, area, monkeypatch):
    root, _ = area
    cv2.imwrite(str(root / "in" / "astronaut.png"), photo_bgr("astronaut")[::2, ::2])
    coffee = len(np.unique(photo_bgr("coffee")[::4, ::4].reshape(-1, 3), axis=0))
    monkeypatch.setenv("KMEANS_MAX_K_COLOURS", str(8 * coffee + 1))
    dag_run = run_dag(DAG_ID, conf_for(root, input=[str(root / "in")], k=8))
    assert dag_run.state == "success"
    summary = json.loads((root / "out" / "latest" / "summary.json").read_text())
    assert [stem_of(i) for i in summary["images"]] == ["coffee"]
    (failure,) = summary["failures"]
    assert failure["error"].startswith(f"{root / 'in' / 'astronaut.png'}: k=8 x ") and "KMEANS_MAX_K_COLOURS" in failure["error"]


def test_byte_budgets_refuse_before_reading(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "coffee.png"), photo_bgr("coffee"))
    points = folder / "points.txt"
    points.write_text("226.0 226.0 226.0\n" * 20000)
    monkeypatch.setenv("KMEANS_MAX_IMAGE_BYTES", str(os.path.getsize(folder / "coffee.png") - 1))
    monkeypatch.setenv("KMEANS_MAX_TEXT_BYTES", str(os.path.getsize(points) - 1))
    status, err = run_cli("quantize", folder / "coffee.png", points, "-k", 2, "--out", tmp_path / "out", "-q")
    assert status == 1
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {folder / 'coffee.png'}: larger than the budget of {os.path.getsize(folder / 'coffee.png') - 1} "
        f"bytes for an image (environment variable KMEANS_MAX_IMAGE_BYTES); not read",
        f"error: {points}: larger than the budget of {os.path.getsize(points) - 1} bytes for a points file "
        f"(environment variable KMEANS_MAX_TEXT_BYTES); not read"]


# ------------------------------------------------------------------ the small ones
def test_an_input_named_summary_keeps_its_json_and_the_run_keeps_its_summary(airflow_db, area):
    root, _ = area
    cv2.imwrite(str(root / "in" / "summary.png"), photo_bgr("chelsea")[::8, ::8])
    dag_run = run_dag(DAG_ID, conf_for(root, input=[str(root / "in")]))
    assert dag_run.state == "success"
    latest = root / "out" / "latest"
    summary = json.loads((latest / "summary.json").read_text())
    assert summary["run"]["run_id"] == dag_run.run_id
    stems = sorted(stem_of(i) for i in summary["images"])
    assert stems == ["coffee", "summary-2"]
    assert json.loads((latest / "summary-2.json").read_text())["source"] == str(root / "in" / "summary.png")


def test_two_cli_runs_into_one_folder_lose_no_output(tmp_path):
    """Two inputs of one stem from different folders, two processes at once into one --out."""
    out = tmp_path / "out"
    procs = []
    for name, photo in (("a", "astronaut"), ("b", "chelsea")):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "img.png"), photo_bgr(photo))
    env = dict(os.environ, PYTHONPATH=ROOT)
    for name in ("a", "b"):
        procs.append(subprocess.Popen([sys.executable, "-m", "kmeans_ops", "quantize", str(tmp_path / name / "img.png"),
                                       "-k", "8", "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [status for status, _ in results] == [0, 0], results
    assert sorted(os.listdir(out)) == ["img-2.json", "img-2.png", "img.json", "img.png"]
    sources = {json.loads((out / f"{stem}.json").read_text())["source"] for stem in ("img", "img-2")}
    assert sources == {str(tmp_path / "a" / "img.png"), str(tmp_path / "b" / "img.png")}


@pytest.mark.parametrize("bad", ["nul", "long name", "long path"])
def test_hostile_path_strings_are_one_line(area, bad):
    root, _ = area
    value = {"nul": f"{root}/in/a\0b.png", "long name": f"{root}/in/{'n' * 300}.png",
             "long path": f"{root}/" + "d/" * 2500 + "x.png"}[bad]
    for param in ("input", "output", "init"):
        message = plan_error(conf_for(root, **{param: [value] if param == "input" else value}))
        assert message.startswith(f"{param}: ") and "not a usable path" in message and len(message) < 600


def test_a_symlink_loop_in_a_shared_folder_is_skipped_and_named_alone_is_one_line(airflow_db, area):
    root, _ = area
    os.symlink(root / "in" / "loop-b.png", root / "in" / "loop-a.png")
    os.symlink(root / "in" / "loop-a.png", root / "in" / "loop-b.png")
    message = plan_error(conf_for(root, input=[str(root / "in" / "loop-a.png")]))
    assert message.startswith("input: ") and "not a usable path" in message
    dag_run = run_dag(DAG_ID, conf_for(root, input=[str(root / "in")]))
    assert dag_run.state == "success"
    assert [stem_of(i) for i in json.loads((root / "out" / "latest" / "summary.json").read_text())["images"]] == ["coffee"]


def test_publication_never_shows_no_folder_while_it_replaces_one(tmp_path):
    """A reader polling the run folder while it is replaced 200 times always finds a complete one."""
    from kmeans_ops.publish import publish

    out = str(tmp_path / "out")
    final = publish(out, "key", [], [], {"run_id": "r", "dag_id": DAG_ID})
    missing = []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            if not os.path.isfile(os.path.join(final, "summary.json")):
                missing.append(time.monotonic())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            publish(out, "key", [], [], {"run_id": "r", "dag_id": DAG_ID})
    finally:
        stop.set()
        reader.join()
    assert missing == []
    assert sorted(os.listdir(out)) == ["key", "latest"]  # no .old-* or staging leftovers


def test_a_publication_killed_between_its_steps_is_repaired(tmp_path):
    """The two states a kill -9 can leave: the swapped-out old folder under the staging name (with
    folder exchange), or the old folder aside with no run folder (the fallback's two renames)."""
    from kmeans_ops.publish import already_published, publish, staging_dir

    out = str(tmp_path / "out")
    run = {"run_id": "r", "dag_id": DAG_ID}
    final = publish(out, "key", [], [], run)
    first = json.loads(open(os.path.join(final, "summary.json")).read())["run"]["published_at"]
    os.rename(final, staging_dir(out, "key"))  # state 1: the old folder where staging was ...
    publish(out, "key-new", [], [], run)
    os.rename(os.path.join(out, "key-new"), final)  # ... and the new one in place
    assert already_published(out, "key")  # a retried publish sees it is done
    assert sorted(os.listdir(out)) == ["key", "latest"]
    assert json.loads(open(os.path.join(final, "summary.json")).read())["run"]["published_at"] > first
    os.rename(final, os.path.join(out, ".old-key-deadbeef"))  # state 2: killed between the renames
    os.makedirs(staging_dir(out, "key"))
    publish(out, "key", [], [], run)
    assert sorted(os.listdir(out)) == ["key", "latest"]


def test_native_decoder_messages_are_not_printed(tmp_path):
    """libpng's own 'libpng error: ...' and OpenCV's '[ WARN:0@...]' lines never reach stderr."""
    ok, encoded = cv2.imencode(".png", photo_bgr("coffee")[::8, ::8])
    data = bytearray(encoded.tobytes())
    data[100:140] = b"x" * 40  # a CRC error in IDAT
    (tmp_path / "crc.png").write_bytes(bytes(data))
    (tmp_path / "short.png").write_bytes(encoded.tobytes()[:300])
    done = subprocess.run([sys.executable, "-m", "kmeans_ops", "quantize", str(tmp_path / "crc.png"),
                           str(tmp_path / "short.png"), "-k", "2", "--out", str(tmp_path / "out"), "-q"],
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if not line.startswith("error: ")] == [lines[-1]]  # the summary line
    assert len([line for line in lines if line.startswith("error: ")]) == 2
    assert "libpng" not in done.stderr and "WARN" not in done.stderr
