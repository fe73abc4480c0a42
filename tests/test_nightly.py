"""kmeans_nightly: finds new images under the landing roots and triggers kmeans_image_clustering
once per folder; a ledger keyed by content makes renamed and copied files not redone and changed
files redone; files still being written (not settled) are left for a later run. The DAG tests run
the real DAG with dag.test(); the triggered runs stay queued."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, load_dag, run_dag
from kmeans_ops import ledger as L
from kmeans_ops.paths import LocalFS
from kmeans_ops.samples import write_samples

TARGET = "kmeans_image_clustering"
VARIABLES = ("KMEANS_LANDING_ROOTS", "KMEANS_NIGHTLY_DEFAULTS", "KMEANS_LEDGER_PATH")
HOUR = 3600


# --- helpers ---------------------------------------------------------------------------------


def write_samples_bytes(name: str) -> bytes:
    """The bytes of a real sample photo file (china.jpg, coffee.png, ...)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        with open(write_samples(folder, names=[name])[0], "rb") as handle:
            return handle.read()


def landed_ago(seconds: float, *paths) -> None:
    """Set the modification time of files, and of every file under folders, ``seconds`` into the
    past: as if they had landed (and settled) then."""
    when = time.time() - seconds
    for path in map(str, paths):
        files = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names] if os.path.isdir(path) else [path]
        for name in files:
            os.utime(name, (when, when))


class LogLines(logging.Handler):
    """The messages logged by kmeans_ops.ledger while in use (``with LogLines() as lines:``)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.level_before = L.log.level
        L.log.setLevel(logging.DEBUG)
        L.log.addHandler(self)
        return self.lines

    def __exit__(self, *exc):
        L.log.removeHandler(self)
        L.log.setLevel(self.level_before)


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
    A = "sha256:" + "a" * 64
    path = tmp_path / "sub" / "ledger.json"
    ledger = L.Ledger.load(str(path))
    assert len(ledger) == 0 and not path.exists()
    assert ledger.record(A, "/x/a.jpg", 10, "run1")
    assert not ledger.record(A, "/y/renamed.jpg", 10, "run2")  # first entry kept
    ledger.save()
    again = L.Ledger.load(str(path))
    assert again.is_known(A) and not again.is_known("sha256:" + "b" * 64)
    entry = again.files[A]
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
        found = L.scan([str(land), str(tmp_path / "missing")], exclude=[str(out)], settle_seconds=0)
    finally:
        L.log.removeHandler(handler)
    assert any(str(tmp_path / "missing") in w for w in warnings), warnings  # reported, not fatal
    paths = [os.path.relpath(f["path"], land) for f in found]
    assert paths == ["a/china.jpg", "a/coffee.png", "a/z-copy.jpg", "b/deep/coffee.PNG"]
    import hashlib

    for f in found:
        data = open(f["path"], "rb").read()
        assert f["digest"] == "sha256:" + hashlib.sha256(data).hexdigest() and f["size"] == len(data)
        assert f["folder"] == os.path.dirname(f["path"])

    ledger = L.Ledger(str(tmp_path / "ledger.json"))
    new = L.new_files(found, ledger)
    assert [os.path.relpath(f["path"], land) for f in new] == ["a/china.jpg", "a/coffee.png"]  # copies dropped
    ledger.record(new[0]["digest"], new[0]["path"], new[0]["size"], "r")
    assert [os.path.relpath(f["path"], land) for f in L.new_files(found, ledger)] == ["a/coffee.png"]

    groups = L.group_by_folder(found, max_per_group=2)
    assert [(os.path.relpath(g["folder"], land), len(g["files"])) for g in groups] == [("a", 2), ("a", 1), ("b/deep", 1)]


def test_record_runs_only_records_existing_runs(tmp_path):
    K1, K2 = "sha256:" + "1" * 64, "hdfs-md5-of-0md5-of-512crc32c:" + "2" * 64  # both kinds of key
    ledger = L.Ledger(str(tmp_path / "ledger.json"))
    plans = [
        {"trigger_run_id": "ok", "files": [{"path": "/a/x.jpg", "digest": K1, "size": 1},
                                           {"path": "/a/y.jpg", "digest": K2, "size": 2}]},
        {"trigger_run_id": "failed", "files": [{"path": "/b/z.jpg", "digest": "sha256:" + "3" * 64, "size": 3}]},
    ]
    recorded, missing = L.record_runs(ledger, plans, lambda run_id: run_id == "ok")
    assert recorded == 2 and [p["trigger_run_id"] for p in missing] == ["failed"]
    saved = L.Ledger.load(ledger.path)
    assert set(saved.files) == {K1, K2} and saved.files[K1]["run_id"] == "ok"
    assert L.record_runs(saved, plans[:1], lambda run_id: True) == (0, [])  # already known: nothing new


def test_hashing_reads_in_chunks(tmp_path, monkeypatch):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * 1000 + 7))
    import hashlib

    from kmeans_ops import paths

    monkeypatch.setattr(paths, "CHUNK", 1000)
    assert L.sha256_file(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- settling: a file is taken only once it has settled ---------------------------------------

S = 1_000_000_000  # ns per second


@pytest.mark.parametrize("before, after, now, settle, read, expected", [
    ((100, 0), (100, 0), 300 * S, 300, None, True),            # exactly settle_seconds old
    ((100, 0), (100, 0), 299 * S, 300, None, False),           # one second too young
    ((100, 0), (100, 0), 10 * S, 0, None, True),                # 0: no age required
    ((100, 50 * S), (100, 50 * S), 10 * S, 0, None, True),      # ... even with an mtime ahead of the clock
    ((100, 0), (150, 0), HOUR * S, 300, 150, False),            # grew while hashed, mtime kept
    ((100, 0), (100, 1), HOUR * S, 300, 100, False),            # touched while hashed, same size
    ((100, 0), (100, 0), HOUR * S, 0, 100, True),               # unchanged, whole size read
    ((0, 0), (0, 0), HOUR * S, 300, 352_256, False),            # HDFS: listed 0 (no block complete), read more
    ((100, 0), (100, 0), HOUR * S, 300, 60, False),             # read less than listed
])
def test_settled_rule(before, after, now, settle, read, expected):
    assert L.settled(before, after, now, settle, read) is expected


def test_a_file_written_while_hashed_is_not_taken(tmp_path):
    """A real file, idle for an hour, that a writer thread appends to after the scan's first look
    and before its second: not taken, and logged with why, its age and the setting. Unchanged, the
    same file is taken with its digest."""
    path = tmp_path / "photo.png"
    path.write_bytes(write_samples_bytes("coffee.png"))
    landed_ago(HOUR, path)
    hashing, written = threading.Event(), threading.Event()

    def writer():
        hashing.wait(30)
        with open(path, "ab") as handle:
            handle.write(b"\0" * 4096)
        written.set()

    def key_while_written():
        hashing.set()
        assert written.wait(30)
        return LocalFS().content_key(str(path))

    thread = threading.Thread(target=writer)
    thread.start()
    with LogLines() as lines:
        taken = L.key_if_settled(str(path), lambda: L._stamp(LocalFS(), str(path)), key_while_written, 300)
    thread.join()
    assert taken is None
    assert len(lines) == 1 and str(path) in lines[0] and "changed while being hashed" in lines[0]
    assert "settle_seconds 300" in lines[0] and re.search(r"last modified [0-9] s ago", lines[0]), lines

    landed_ago(HOUR, path)  # the writer is done: an hour later, it has settled
    with LogLines() as lines:
        taken = L.key_if_settled(str(path), lambda: L._stamp(LocalFS(), str(path)), lambda: LocalFS().content_key(str(path)), 300)
    assert taken == (L.local_key(str(path)), path.stat().st_size) and lines == []
    assert taken[0] == "sha256:" + L.sha256_file(str(path))


def test_scan_skips_a_file_growing_during_the_scan(tmp_path):
    """A real 64 MB file that a writer thread keeps appending to while the scan hashes it: with
    settle_seconds 0 (no age required) it is still not taken, because it changed while hashed; its
    settled neighbour is. Once the writer stops, the next scan takes it."""
    land = tmp_path / "land"
    land.mkdir()
    steady = land / "a-steady.png"
    steady.write_bytes(write_samples_bytes("coffee.png"))
    growing = land / "b-growing.png"
    growing.write_bytes(os.urandom(64 << 20))
    stop, appended = threading.Event(), threading.Event()

    def writer():
        with open(growing, "ab", buffering=0) as handle:
            while not stop.is_set():
                handle.write(b"\1" * 1024)
                appended.set()
                time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert appended.wait(30)
        with LogLines() as lines:
            found = L.scan([str(land)], settle_seconds=0)
    finally:
        stop.set()
        thread.join()
    assert [f["path"] for f in found] == [str(steady)]
    assert [line for line in lines if str(growing) in line and "changed while being hashed" in line], lines

    found = L.scan([str(land)], settle_seconds=0)
    assert [f["path"] for f in found] == [str(steady), str(growing)]
    assert found[1]["size"] == growing.stat().st_size and found[1]["digest"] == L.local_key(str(growing))


def test_scan_leaves_young_files_unhashed_and_logs_them(tmp_path):
    """A file modified less than settle_seconds ago is logged (age, setting) and not even hashed:
    it is left out of the scan until it is old enough."""
    land = tmp_path / "land"
    old, young = write_samples(str(land), names=["china.jpg", "coffee.png"])
    landed_ago(HOUR, old)
    landed_ago(100, young)
    with LogLines() as lines:
        found = L.scan([str(land)], settle_seconds=300)
    assert [f["path"] for f in found] == [old]
    assert lines == [f"{young}: not settled, left for a later run (last modified 100 s ago; settle_seconds 300)"]
    assert [f["path"] for f in L.scan([str(land)], settle_seconds=100)] == [old, young]
    assert [f["path"] for f in L.scan([str(land)])] == [old]  # the default: 300 s


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
    assert dag.params["settle_seconds"] is None  # null: the defaults Variable's, else the default
    schema = dag.params.get_param("settle_seconds").schema
    assert schema["minimum"] == 0 and "integer" in schema["type"] and schema["title"]
    assert str(L.settings.DEFAULT_SETTLE_SECONDS) in dag.params.get_param("settle_seconds").description
    # the keys a default may set are exactly kmeans_image_clustering's params but "input"
    import importlib.util

    spec = importlib.util.spec_from_file_location("kmeans_nightly_dag", os.path.join(ROOT, "dags", "kmeans_nightly.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    TARGET_PARAMS, check_defaults = module.TARGET_PARAMS, module.check_defaults

    assert set(TARGET_PARAMS) == set(load_dag(TARGET).params) - {"input"}
    assert not set(module.NIGHTLY_KEYS) & set(load_dag(TARGET).params)  # the nightly's own keys
    check_defaults({"k": 8, "engine": "local", "settle_seconds": 60})
    with pytest.raises(ValueError, match="unknown key.*colours, input"):
        check_defaults({"k": 8, "colours": 3, "input": ["/x"]})
    assert module.target_conf({"k": 8, "settle_seconds": 60}) == {"k": 8}

    # settle_seconds: the run's param, else the defaults Variable's key, else the default
    settle = module.settle_seconds
    default = L.settings.DEFAULT_SETTLE_SECONDS
    assert settle(None, {})[0] == default == 300
    assert settle(None, {"settle_seconds": 0})[0] == 0
    assert settle(None, {"settle_seconds": 900}) == (900, "Variable kmeans_nightly_defaults")
    assert settle(5, {"settle_seconds": 900}) == (5, "the run's param")
    assert settle(0, {"settle_seconds": 900})[0] == 0  # 0 given explicitly is not "unset"
    for bad in (-1, 2.5, "60", True):
        with pytest.raises(ValueError, match="kmeans_nightly_defaults: settle_seconds must be an integer >= 0"):
            settle(None, {"settle_seconds": bad})


# --- real DAG runs ---------------------------------------------------------------------------


def test_new_renamed_copied_and_changed_files(airflow_db, config):
    land = config.landing
    write_samples(str(land / "a"), names=["china.jpg", "coffee.png"])
    write_samples(str(land / "b"), names=["chelsea.png"])
    shutil.copy(land / "a" / "china.jpg", land / "b" / "dup.jpg")  # a copy in the same scan
    landed_ago(HOUR, land)
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
    landed_ago(HOUR, land)
    state, runs, _ = nightly()
    assert state == "success"
    assert runs == [{"k": 4, "engine": "local", "input": [str(land / "a" / "rocket.png")]}]

    # 4. a changed file (same name, new content) triggers again
    shutil.copy(write_samples(str(land.parent / "elsewhere"), names=["astronaut.png"])[0], land / "a" / "coffee.png")
    landed_ago(HOUR, land / "a" / "coffee.png")
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
    landed_ago(HOUR, config.landing)
    config.set("kmeans_ledger_path", str(config.ledger))
    # landing roots from the run's params (no Variable)
    assert nightly({"landing_roots": [str(config.landing)], "dry_run": True}) == ("success", [], NOTHING_NEW)
    assert not config.ledger.exists()
    # the same run without dry_run would have triggered it
    state, runs, _ = nightly({"landing_roots": [str(config.landing)]})
    assert state == "success" and [r["input"] for r in runs] == [[str(config.landing / "a" / "china.jpg")]]


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
    landed_ago(HOUR, config.landing)
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
    landed_ago(HOUR, config.landing)
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


def test_a_file_being_written_is_taken_once_complete_and_settled(airflow_db, config):
    """The bug: a PNG hashed, triggered and recorded while half copied, then again once complete.
    Now a half-written PNG (modified just now) is neither triggered nor recorded; complete but just
    written, still not; once settled (default settle_seconds, 300 s), taken once, whole."""
    land = config.landing
    (done,) = write_samples(str(land / "a"), names=["china.jpg"])
    landed_ago(HOUR, done)
    png = write_samples_bytes("astronaut.png")
    partial = land / "a" / "astronaut.png"
    partial.write_bytes(png[: len(png) // 3])  # a copy in progress
    config.set("kmeans_landing_roots", [str(land)])
    config.set("kmeans_ledger_path", str(config.ledger))

    state, runs, _ = nightly()
    assert state == "success" and [r["input"] for r in runs] == [[done]]
    recorded = {e["path"] for e in L.Ledger.load(str(config.ledger)).files.values()}
    assert recorded == {done}

    partial.write_bytes(png)  # the copy completes, just now
    assert nightly() == ("success", [], NOTHING_NEW)
    assert len(L.Ledger.load(str(config.ledger))) == 1

    landed_ago(301, partial)  # five minutes later, unchanged
    state, runs, _ = nightly()
    assert state == "success" and [r["input"] for r in runs] == [[str(partial)]]
    import hashlib

    entries = L.Ledger.load(str(config.ledger)).files
    assert entries["sha256:" + hashlib.sha256(png).hexdigest()]["size"] == len(png)  # the whole file, once
    assert "sha256:" + hashlib.sha256(png[: len(png) // 3]).hexdigest() not in entries and len(entries) == 2
    assert nightly() == ("success", [], NOTHING_NEW)


def test_settle_seconds_from_the_defaults_variable_is_not_forwarded(airflow_db, config):
    """settle_seconds in kmeans_nightly_defaults is the nightly's own: used for the scan, never put
    in the triggered run's conf (kmeans_image_clustering would refuse it). The run's param wins."""
    (photo,) = write_samples(str(config.landing / "a"), names=["coffee.png"])
    landed_ago(600, photo)  # older than the default 300 s, younger than the Variable's hour
    config.set("kmeans_landing_roots", [str(config.landing)])
    config.set("kmeans_ledger_path", str(config.ledger))
    config.set("kmeans_nightly_defaults", {"k": 4, "settle_seconds": HOUR})

    assert nightly() == ("success", [], NOTHING_NEW)  # the Variable's hour: not settled
    assert not config.ledger.exists()

    state, runs, tis = nightly({"settle_seconds": 60})  # the run's param wins
    assert (state, tis["trigger"]) == ("success", ["success"])
    assert runs == [{"k": 4, "input": [photo]}]  # no settle_seconds forwarded


def test_bad_settle_seconds_fails_the_run_naming_it(airflow_db, config):
    write_samples(str(config.landing / "a"), names=["coffee.png"])
    landed_ago(HOUR, config.landing)
    config.set("kmeans_landing_roots", [str(config.landing)])
    config.set("kmeans_ledger_path", str(config.ledger))
    config.set("kmeans_nightly_defaults", {"settle_seconds": -5})
    assert nightly() == ("failed", [], {"scan": "failed", "trigger": ["upstream_failed"], "record": "failed"})
    assert not config.ledger.exists()
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="settle_seconds"):
        run_dag("kmeans_nightly", {"settle_seconds": -1})


# --- content keys: SHA-256 for local files, the HDFS checksum on HDFS; version 1 ledgers -------


def Received():
    """Bytes this process receives on its sockets while in use (``with Received() as got:``, then
    ``got.bytes``): the benchmark's counter (bench/bench_ledger.py), shared so both count alike.
    ``/proc/self/io`` rchar would not do: the kernel counts read(2) there, not recv(2) on a socket."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from bench_ledger import Received as counter

    return counter()


def test_a_version_1_ledger_is_read_as_sha256_keys(tmp_path):
    """A ledger written before content keys had kinds (version 1, bare SHA-256 digests) loads with
    every entry as a ``sha256:`` key: a local file recorded then is still known; saved, it is
    version 2. A bare digest in a version 2 ledger is corrupt."""
    land = tmp_path / "land"
    (photo,) = write_samples(str(land), names=["coffee.png"])
    path = tmp_path / "ledger.json"
    entry = {"path": photo, "size": os.path.getsize(photo), "first_seen": "2025-01-01T02:00:00+00:00", "run_id": "r1"}
    path.write_text(json.dumps({"version": 1, "files": {L.sha256_file(photo): entry}}))
    ledger = L.Ledger.load(str(path))
    assert set(ledger.files) == {L.local_key(photo)} and ledger.files[L.local_key(photo)] == entry
    found = L.scan([str(land)], settle_seconds=0)
    assert [f["digest"] for f in found] == [L.local_key(photo)] and L.new_files(found, ledger) == []
    assert L.adopt_legacy(found, ledger) == 0  # local files need nothing
    ledger.save()
    saved = json.loads(path.read_text())
    assert saved["version"] == 2 and list(saved["files"]) == [L.local_key(photo)]
    path.write_text(json.dumps({"version": 2, "files": {L.sha256_file(photo): entry}}))
    with pytest.raises(L.LedgerError, match="entry 1 is not a content key"):
        L.Ledger.load(str(path))


@pytest.fixture(scope="module")
def dev_hdfs():
    """The running dev cluster's HDFS (never started here: skipped when it does not answer) and a
    fresh folder on it, removed afterwards."""
    import uuid

    from kmeans_ops.hdfs import Hdfs

    try:
        client = Hdfs(retries=0)
        client.exists("/")
    except Exception as err:  # noqa: BLE001 - whatever stops it answering
        pytest.skip(f"dev HDFS not answering ({err}); it is started by bin/hadoop-dev up")
    root = f"{client.home()}/test-ledger-{uuid.uuid4().hex[:8]}"
    client.makedirs(root)
    yield client, root
    client.delete(root)


def hdfs_write(client, path: str, data: bytes, blocksize: int | None = None) -> str:
    """Create ``path`` with ``data`` (and a block size, when given); returns its hdfs:// URI."""
    client.call("write", path, client.client.write, path, data=data, overwrite=True, blocksize=blocksize)
    return f"hdfs://127.0.0.1:8020{path}"


MB = 1 << 20


def test_hdfs_content_key_is_the_file_checksum_and_reads_no_byte(dev_hdfs):
    """On HDFS the key is the NameNode's file checksum: same bytes, same key, whatever block size
    the file was written with as long as it fits in one block (an image: HDFS's default is 128 MB);
    one byte changed, another key; the kind in the prefix. Computing it reads almost nothing (the
    checksum, the HTTP exchange), where SHA-256 through WebHDFS reads every byte. For a file of
    several blocks the key is that of the algorithm the server answers: Hadoop 3.5's WebHDFS
    answers MD5-of-MD5-of-CRC32C, whose name holds the chunks per block, so different block
    sizes give different keys (processed again, never wrongly skipped); a COMPOSITE-CRC answer
    would give the same key."""
    from kmeans_ops.paths import HdfsFS

    client, root = dev_hdfs
    fs = HdfsFS(client)
    image = write_samples_bytes("china.jpg")  # 196 kB, a real photo
    changed = image[:1000] + bytes([image[1000] ^ 1]) + image[1001:]
    small = {bs: hdfs_write(client, f"{root}/keys/china-{bs}.jpg", image, bs) for bs in (MB, 2 * MB, None)}
    other = hdfs_write(client, f"{root}/keys/changed.jpg", changed)

    keys = {bs: fs.content_key(uri) for bs, uri in small.items()}
    assert all(read is None for _, read in keys.values())  # nothing read to compute them
    key = keys[None][0]
    assert {k for k, _ in keys.values()} == {key}, keys  # three block sizes, one key
    assert key.startswith("hdfs-") and not key.startswith("sha256:")
    assert fs.content_key(other)[0] != key and fs.content_key(other)[0].split(":")[0] == key.split(":")[0]
    with Received() as checksum:
        fs.content_key(small[None])
    with Received() as sha:
        assert fs.sha256(small[None])[1] == len(image)
    assert 0 < checksum.bytes < 4_000 < len(image) <= sha.bytes, (checksum.bytes, sha.bytes)

    big = os.urandom(3 * MB + 5)  # 3 blocks of 1 MB, 2 of 2 MB, 1 of 128 MB
    big_keys = {bs: fs.content_key(hdfs_write(client, f"{root}/keys/big-{bs}.bin", big, bs))[0]
                for bs in (MB, 2 * MB, None)}
    if all(k.startswith("hdfs-composite-") for k in big_keys.values()):
        assert len(set(big_keys.values())) == 1, big_keys
    else:  # MD5-of-<chunks per block>MD5-of-512CRC32C: the block size is in the algorithm's name
        assert big_keys[None].startswith("hdfs-md5-of-0md5-of-512crc32c:"), big_keys
        assert big_keys[MB].startswith("hdfs-md5-of-2048md5-of-512crc32c:"), big_keys
        assert len(set(big_keys.values())) == 3, big_keys


def test_hdfs_scan_keys_by_checksum_and_a_local_copy_is_another_kind(dev_hdfs, tmp_path):
    """The scan of an HDFS landing root keys its files by checksum: a copy under another name is
    not new, a changed file is; the ledger round-trips the keys. The same photo in a local landing
    root has a sha256: key: known once per kind of filesystem."""
    client, root = dev_hdfs
    png, jpg = write_samples_bytes("coffee.png"), write_samples_bytes("china.jpg")
    uri = hdfs_write(client, f"{root}/scan/a/coffee.png", png).rsplit("/scan/", 1)[0] + "/scan"
    hdfs_write(client, f"{root}/scan/a/renamed-copy.png", png, 2 * MB)
    hdfs_write(client, f"{root}/scan/b/china.jpg", jpg)
    found = L.scan([uri], settle_seconds=0)
    assert [f["path"] for f in found] == [f"{uri}/a/coffee.png", f"{uri}/a/renamed-copy.png", f"{uri}/b/china.jpg"]
    assert found[0]["digest"] == found[1]["digest"] != found[2]["digest"]
    assert all(f["digest"].startswith("hdfs-") and f["size"] in (len(png), len(jpg)) for f in found)
    ledger = L.Ledger(str(tmp_path / "ledger.json"))
    new = L.new_files(found, ledger)
    assert [f["path"] for f in new] == [f"{uri}/a/coffee.png", f"{uri}/b/china.jpg"]
    for f in new:
        ledger.record(f["digest"], f["path"], f["size"], "r1")
    ledger.save()
    ledger = L.Ledger.load(ledger.path)
    hdfs_write(client, f"{root}/scan/b/china.jpg", jpg[:-1] + b"\0")  # changed in place
    again = L.scan([uri], settle_seconds=0)
    assert [f["path"] for f in L.new_files(again, ledger)] == [f"{uri}/b/china.jpg"]

    local = tmp_path / "land"
    local.mkdir()
    (local / "coffee.png").write_bytes(png)
    (mine,) = L.scan([str(local)], settle_seconds=0)
    assert mine["digest"].startswith("sha256:") and not ledger.is_known(mine["digest"])


def test_hdfs_files_of_a_version_1_ledger_are_adopted_once(dev_hdfs, tmp_path):
    """A version 1 ledger recorded HDFS files by SHA-256. The first scan after the upgrade reads
    those files once (only those whose size matches an old HDFS entry) and records their checksum
    key beside the old entry: they are not redone; a new file of another size is not read at all;
    the next scan reads nothing."""
    import hashlib

    client, root = dev_hdfs
    png, jpg = write_samples_bytes("coffee.png"), write_samples_bytes("china.jpg")
    old = hdfs_write(client, f"{root}/legacy/coffee.png", png)
    new = hdfs_write(client, f"{root}/legacy/china.jpg", jpg)
    uri = old.rsplit("/", 1)[0]
    path = tmp_path / "ledger.json"
    entry = {"path": old, "size": len(png), "first_seen": "2025-01-01T02:00:00+00:00", "run_id": "nightly__old"}
    path.write_text(json.dumps({"version": 1, "files": {hashlib.sha256(png).hexdigest(): entry}}))
    ledger = L.Ledger.load(str(path))

    found = L.scan([uri], settle_seconds=0)
    with LogLines() as lines, Received() as got:
        assert L.adopt_legacy(found, ledger) == 1
    assert len(png) <= got.bytes < len(png) + len(jpg)  # coffee.png read once, china.jpg not
    assert any("known by its SHA-256" in line and old in line for line in lines), lines
    assert [f["path"] for f in L.new_files(found, ledger)] == [new]
    key = {f["path"]: f["digest"] for f in found}[old]
    assert ledger.files[key] == {**entry, "sha256": "sha256:" + hashlib.sha256(png).hexdigest()}
    ledger.save()

    ledger = L.Ledger.load(str(path))
    found = L.scan([uri], settle_seconds=0)
    with Received() as got:
        assert L.adopt_legacy(found, ledger) == 0
    assert got.bytes == 0  # nothing read: the checksum key is known now
    assert [f["path"] for f in L.new_files(found, ledger)] == [new]


def test_an_hdfs_file_being_uploaded_is_not_settled_and_gets_no_key(dev_hdfs):
    """A file still being uploaded (its first bytes sent, the rest held back) has no checksum yet:
    the scan logs it once as not settled, "still open for writing" (no "cannot read" warning) and
    leaves it out; once closed, it is taken with the key of its whole content."""
    from kmeans_ops.paths import HdfsFS, StillBeingWritten

    client, root = dev_hdfs
    png = write_samples_bytes("rocket.png")
    path = f"{root}/uploading/rocket.png"
    uri = f"hdfs://127.0.0.1:8020{root}/uploading"
    client.makedirs(f"{root}/uploading")
    release = threading.Event()

    def body():
        yield png[: len(png) // 3]
        release.wait(60)
        yield png[len(png) // 3:]

    upload = threading.Thread(target=client.client.write, args=(path,), kwargs={"data": body(), "overwrite": True})
    upload.start()
    try:
        deadline = time.monotonic() + 30
        while not client.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        with pytest.raises(StillBeingWritten):
            HdfsFS(client).content_key(f"{uri}/rocket.png")
        with LogLines() as lines:
            assert L.scan([uri], settle_seconds=0) == []
    finally:
        release.set()
        upload.join()
    assert len(lines) == 1 and "not settled" in lines[0] and "still open for writing" in lines[0], lines
    (taken,) = L.scan([uri], settle_seconds=0)
    whole = hdfs_write(client, f"{root}/whole-rocket.png", png)
    assert taken["size"] == len(png) and taken["digest"] == HdfsFS(client).content_key(whole)[0]


def test_nightly_dag_on_hdfs_with_a_version_1_ledger(airflow_db, config, dev_hdfs):
    """The real DAG on an HDFS landing root with a version 1 ledger that recorded one of its files
    by SHA-256: that file is not triggered again, the new one is; the ledger is then version 2,
    keyed by checksum (the old entry kept beside); the next night reads no file and triggers nothing."""
    import hashlib

    client, root = dev_hdfs
    png, jpg = write_samples_bytes("coffee.png"), write_samples_bytes("china.jpg")
    old = hdfs_write(client, f"{root}/dag/a/coffee.png", png)
    new = hdfs_write(client, f"{root}/dag/a/china.jpg", jpg)
    entry = {"path": old, "size": len(png), "first_seen": "2025-01-01T02:00:00+00:00", "run_id": "nightly__old"}
    config.ledger.parent.mkdir(parents=True)
    config.ledger.write_text(json.dumps({"version": 1, "files": {hashlib.sha256(png).hexdigest(): entry}}))
    config.set("kmeans_landing_roots", [old.rsplit("/a/", 1)[0]])
    config.set("kmeans_ledger_path", str(config.ledger))
    config.set("kmeans_nightly_defaults", {"k": 4, "settle_seconds": 0})

    state, runs, _ = nightly()
    assert state == "success" and [r["input"] for r in runs] == [[new]]
    saved = json.loads(config.ledger.read_text())
    assert saved["version"] == 2 and len(saved["files"]) == 3  # the old entry, its checksum key, the new file
    assert all(k.startswith("hdfs-") for k in saved["files"] if k != "sha256:" + hashlib.sha256(png).hexdigest())
    with Received() as got:
        assert nightly() == ("success", [], NOTHING_NEW)
    assert got.bytes < len(jpg)  # keys by checksum: the files are not read
