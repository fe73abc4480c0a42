"""kmeans_nightly: finds new images under the landing roots and triggers kmeans_image_clustering
once per folder; a ledger keyed by content makes renamed and copied files not redone and changed
files redone. The DAG tests run the real DAG with dag.test(); the triggered runs stay queued."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, load_dag, run_dag
from kmeans_ops import ledger as L
from kmeans_ops.samples import write_samples

TARGET = "kmeans_image_clustering"
VARIABLES = ("KMEANS_LANDING_ROOTS", "KMEANS_NIGHTLY_DEFAULTS", "KMEANS_LEDGER_PATH")


# --- helpers ---------------------------------------------------------------------------------


def target_runs() -> dict[str, dict]:
    """run_id -> conf of every kmeans_image_clustering run in the metadata DB."""
    from sqlalchemy import select

    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return {r.run_id: r.conf for r in session.scalars(select(DagRun).where(DagRun.dag_id == TARGET))}


def task_states(run_id: str) -> dict:
    """{"scan": state, "trigger": [state of each mapped instance], "record": state} of a nightly run."""
    from sqlalchemy import select

    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    states: dict = {"trigger": []}
    with create_session() as session:
        query = select(TaskInstance).where(TaskInstance.dag_id == "kmeans_nightly", TaskInstance.run_id == run_id)
        for ti in sorted(session.scalars(query), key=lambda ti: ti.map_index):
            if ti.task_id == "trigger":
                states["trigger"].append(str(ti.state))
            else:
                states[ti.task_id] = str(ti.state)
    return states


def nightly(conf: dict | None = None) -> tuple[str, list[dict], dict]:
    """Run kmeans_nightly once; returns its state, the confs of the runs it triggered (sorted by
    input) and its task states (task_states)."""
    before = target_runs()
    dr = run_dag("kmeans_nightly", conf or {})
    new = {run_id: c for run_id, c in target_runs().items() if run_id not in before}
    assert all(run_id.startswith("nightly__") for run_id in new), new
    return str(dr.state), sorted(new.values(), key=lambda c: c["input"]), task_states(dr.run_id)


NOTHING_NEW = {"scan": "success", "trigger": ["skipped"], "record": "success"}


@pytest.fixture()
def config(monkeypatch, tmp_path):
    """No Variable set at start (AIRFLOW_VAR_* environment variables, undone after the test); returns
    a setter and this test's landing root and ledger path."""
    for name in VARIABLES:
        monkeypatch.delenv(f"AIRFLOW_VAR_{name}", raising=False)

    class Config:
        landing = tmp_path / "landing"
        ledger = tmp_path / "state" / "ledger.json"

        @staticmethod
        def set(name: str, value) -> None:
            monkeypatch.setenv(f"AIRFLOW_VAR_{name.upper()}", value if isinstance(value, str) else json.dumps(value))

    return Config


# --- kmeans_ops.ledger alone -----------------------------------------------------------------


def test_ledger_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "sub" / "ledger.json"
    ledger = L.Ledger.load(str(path))
    assert len(ledger) == 0 and not path.exists()
    assert ledger.record("a" * 64, "/x/a.jpg", 10, "run1")
    assert not ledger.record("a" * 64, "/y/renamed.jpg", 10, "run2")  # first entry kept
    ledger.save()
    again = L.Ledger.load(str(path))
    assert again.is_known("a" * 64) and not again.is_known("b" * 64)
    entry = again.files["a" * 64]
    assert entry["path"] == "/x/a.jpg" and entry["size"] == 10 and entry["run_id"] == "run1" and entry["first_seen"]
    assert [n for n in os.listdir(path.parent)] == ["ledger.json"]  # no temporary file left


@pytest.mark.parametrize("text", ["{not json", "[]", '{"version": 1, "files": []}', '{"files": {}}'])
def test_corrupt_ledger_names_the_file(tmp_path, text):
    path = tmp_path / "ledger.json"
    path.write_text(text)
    with pytest.raises(L.LedgerError) as err:
        L.Ledger.load(str(path))
    assert str(path) in str(err.value)


def test_scan_hashes_filters_and_dedups(tmp_path):
    land = tmp_path / "land"
    (a, b) = write_samples(str(land / "a"), names=["china.jpg", "coffee.png"])
    shutil.copy(a, land / "a" / "z-copy.jpg")  # same content, another name
    os.makedirs(land / "b" / "deep")
    shutil.copy(b, land / "b" / "deep" / "coffee.PNG")  # upper-case extension, copy
    (land / "a" / "notes.txt").write_text("not an image")
    (land / "a" / ".upload.jpg").write_bytes(b"hidden file")
    os.makedirs(land / ".trash")
    shutil.copy(a, land / ".trash" / "old.jpg")
    out = land / "out"  # our output root inside the landing root, and a published run elsewhere
    os.makedirs(out / "run-1")
    shutil.copy(b, out / "run-1" / "coffee.png")
    published = land / "published"
    os.makedirs(published)
    shutil.copy(a, published / "china.png")
    (published / "summary.json").write_text("{}")
    (published / "report.html").write_text("")
    os.symlink(published, land / "latest")

    import logging

    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    L.log.addHandler(handler)
    try:
        found = L.scan([str(land), str(tmp_path / "missing")], exclude=[str(out)])
    finally:
        L.log.removeHandler(handler)
    assert any(str(tmp_path / "missing") in w for w in warnings), warnings  # reported, not fatal
    paths = [os.path.relpath(f["path"], land) for f in found]
    assert paths == ["a/china.jpg", "a/coffee.png", "a/z-copy.jpg", "b/deep/coffee.PNG"]
    import hashlib

    for f in found:
        data = open(f["path"], "rb").read()
        assert f["digest"] == hashlib.sha256(data).hexdigest() and f["size"] == len(data)
        assert f["folder"] == os.path.dirname(f["path"])

    ledger = L.Ledger(str(tmp_path / "ledger.json"))
    new = L.new_files(found, ledger)
    assert [os.path.relpath(f["path"], land) for f in new] == ["a/china.jpg", "a/coffee.png"]  # copies dropped
    ledger.record(new[0]["digest"], new[0]["path"], new[0]["size"], "r")
    assert [os.path.relpath(f["path"], land) for f in L.new_files(found, ledger)] == ["a/coffee.png"]

    groups = L.group_by_folder(found, max_per_group=2)
    assert [(os.path.relpath(g["folder"], land), len(g["files"])) for g in groups] == [("a", 2), ("a", 1), ("b/deep", 1)]


def test_record_runs_only_records_existing_runs(tmp_path):
    ledger = L.Ledger(str(tmp_path / "ledger.json"))
    plans = [
        {"trigger_run_id": "ok", "files": [{"path": "/a/x.jpg", "digest": "1" * 64, "size": 1},
                                           {"path": "/a/y.jpg", "digest": "2" * 64, "size": 2}]},
        {"trigger_run_id": "failed", "files": [{"path": "/b/z.jpg", "digest": "3" * 64, "size": 3}]},
    ]
    recorded, missing = L.record_runs(ledger, plans, lambda run_id: run_id == "ok")
    assert recorded == 2 and [p["trigger_run_id"] for p in missing] == ["failed"]
    saved = L.Ledger.load(ledger.path)
    assert set(saved.files) == {"1" * 64, "2" * 64} and saved.files["1" * 64]["run_id"] == "ok"
    assert L.record_runs(saved, plans[:1], lambda run_id: True) == (0, [])  # already known: nothing new


def test_hashing_reads_in_chunks(tmp_path, monkeypatch):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * 1000 + 7))
    monkeypatch.setattr(L, "CHUNK", 1000)
    import hashlib

    assert L.sha256_file(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- the DAG file ----------------------------------------------------------------------------


def test_dag_file_imports_without_numpy_or_cv2():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('kmeans_nightly_dag', {os.path.join(ROOT, 'dags', 'kmeans_nightly.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "heavy = sorted(m for m in ('numpy', 'cv2') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print(module.kmeans_nightly().dag_id)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_VAR_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("kmeans_nightly")


def test_dag_shape_and_allowed_defaults(airflow_db):
    dag = load_dag("kmeans_nightly")
    assert set(dag.task_dict) == {"scan", "trigger", "record"}
    assert dag.task_dict["record"].trigger_rule == "all_done"
    assert dag.params["landing_roots"] == [] and dag.params["dry_run"] is False
    # the keys a default may set are exactly kmeans_image_clustering's params but "input"
    import importlib.util

    spec = importlib.util.spec_from_file_location("kmeans_nightly_dag", os.path.join(ROOT, "dags", "kmeans_nightly.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    TARGET_PARAMS, check_defaults = module.TARGET_PARAMS, module.check_defaults

    assert set(TARGET_PARAMS) == set(load_dag(TARGET).params) - {"input"}
    check_defaults({"k": 8, "engine": "local"})
    with pytest.raises(ValueError, match="unknown key.*colours, input"):
        check_defaults({"k": 8, "colours": 3, "input": ["/x"]})


# --- real DAG runs ---------------------------------------------------------------------------


def test_new_renamed_copied_and_changed_files(airflow_db, config):
    land = config.landing
    write_samples(str(land / "a"), names=["china.jpg", "coffee.png"])
    write_samples(str(land / "b"), names=["chelsea.png"])
    shutil.copy(land / "a" / "china.jpg", land / "b" / "dup.jpg")  # a copy in the same scan
    config.set("kmeans_landing_roots", [str(land), str(land.parent / "not-there")])
    config.set("kmeans_ledger_path", str(config.ledger))
    config.set("kmeans_nightly_defaults", {"k": 4, "engine": "local"})

    # 1. first night: one run per folder, the folder's new files listed, defaults merged
    state, runs, tis = nightly()
    assert (state, tis) == ("success", {"scan": "success", "trigger": ["success", "success"], "record": "success"})
    assert runs == [
        {"k": 4, "engine": "local", "input": [str(land / "a" / "china.jpg"), str(land / "a" / "coffee.png")]},
        {"k": 4, "engine": "local", "input": [str(land / "b" / "chelsea.png")]},
    ]
    ledger = L.Ledger.load(str(config.ledger))
    assert len(ledger) == 3
    assert {e["path"] for e in ledger.files.values()} == {str(land / p) for p in ("a/china.jpg", "a/coffee.png", "b/chelsea.png")}
    assert all(e["run_id"].startswith("nightly__") for e in ledger.files.values())

    # 2. nothing new: triggers nothing, succeeds
    assert nightly() == ("success", [], NOTHING_NEW)

    # 3. a new file triggers once, alone; a renamed and a copied file trigger nothing
    write_samples(str(land / "a"), names=["rocket.png"])
    os.rename(land / "b" / "chelsea.png", land / "b" / "cat.png")
    os.makedirs(land / "c")
    shutil.copy(land / "a" / "coffee.png", land / "c" / "coffee-copy.png")
    state, runs, _ = nightly()
    assert state == "success"
    assert runs == [{"k": 4, "engine": "local", "input": [str(land / "a" / "rocket.png")]}]

    # 4. a changed file (same name, new content) triggers again
    shutil.copy(write_samples(str(land.parent / "elsewhere"), names=["astronaut.png"])[0], land / "a" / "coffee.png")
    state, runs, _ = nightly()
    assert state == "success"
    assert runs == [{"k": 4, "engine": "local", "input": [str(land / "a" / "coffee.png")]}]
    assert len(L.Ledger.load(str(config.ledger))) == 5


def test_no_configuration_triggers_nothing(airflow_db, config):
    ledger = os.path.join(os.environ["AIRFLOW_HOME"], "kmeans-ledger.json")
    existed = os.path.exists(ledger)
    assert nightly() == ("success", [], NOTHING_NEW)
    assert os.path.exists(ledger) == existed


def test_dry_run_triggers_and_records_nothing(airflow_db, config):
    write_samples(str(config.landing / "a"), names=["china.jpg"])
    config.set("kmeans_ledger_path", str(config.ledger))
    # landing roots from the run's params (no Variable)
    assert nightly({"landing_roots": [str(config.landing)], "dry_run": True}) == ("success", [], NOTHING_NEW)
    assert not config.ledger.exists()


def test_unknown_default_key_fails_the_run(airflow_db, config):
    write_samples(str(config.landing / "a"), names=["china.jpg"])
    config.set("kmeans_landing_roots", [str(config.landing)])
    config.set("kmeans_ledger_path", str(config.ledger))
    config.set("kmeans_nightly_defaults", {"k": 4, "colours": 8})
    # scan fails; record (all_done) runs anyway and must fail too, or the run would be a success
    assert nightly() == ("failed", [], {"scan": "failed", "trigger": ["upstream_failed"], "record": "failed"})
    assert not config.ledger.exists()


def test_failed_trigger_records_nothing_and_fails_the_run(airflow_db, config):
    write_samples(str(config.landing / "a"), names=["china.jpg"])
    write_samples(str(config.landing / "b"), names=["coffee.png"])
    config.set("kmeans_landing_roots", [str(config.landing)])
    config.set("kmeans_ledger_path", str(config.ledger))
    config.set("kmeans_nightly_defaults", {"k": 0})  # kmeans_image_clustering refuses it: trigger fails
    assert nightly() == ("failed", [], {"scan": "success", "trigger": ["failed", "failed"], "record": "failed"})
    assert not config.ledger.exists()  # the files are found again next night


def test_rerun_of_the_same_nightly_run_does_not_trigger_twice(airflow_db, config):
    """A nightly run whose triggers ran but whose record did not (ledger lost here) and which is run
    again: same run id, same trigger run ids; the existing runs are found (trigger skipped, not
    failed), nothing is triggered twice, and the files are recorded."""
    from datetime import datetime, timezone

    write_samples(str(config.landing / "a"), names=["china.jpg"])
    write_samples(str(config.landing / "b"), names=["coffee.png"])
    config.set("kmeans_landing_roots", [str(config.landing)])
    config.set("kmeans_ledger_path", str(config.ledger))
    when = datetime.now(timezone.utc)
    dag = load_dag("kmeans_nightly")

    before = target_runs()
    first = dag.test(logical_date=when, run_after=when)
    triggered = set(target_runs()) - set(before)
    assert str(first.state) == "success" and len(triggered) == 2
    config.ledger.unlink()

    again = dag.test(logical_date=when, run_after=when)
    assert again.run_id == first.run_id and str(again.state) == "success"
    assert task_states(again.run_id) == {"scan": "success", "trigger": ["skipped", "skipped"], "record": "success"}
    assert set(target_runs()) - set(before) == triggered  # nothing new
    assert {e["run_id"] for e in L.Ledger.load(str(config.ledger)).files.values()} == triggered
