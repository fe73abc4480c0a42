"""DAG params are untrusted: every path they name must lie under the allowed roots (Airflow Variable
kmeans_allowed_roots), after resolving `..`, `~` and symlinks; a path outside fails the run at
`prepare`, and nothing is read or written."""

import json
import os

import cv2
import pytest

from conftest import photo_bgr, run_dag

DAG_ID = "kmeans_image_clustering"


@pytest.fixture
def area(tmp_path, monkeypatch):
    """An allowed root holding a photo, a folder outside it holding a 'secret' image and a clusters
    file, and symlinks inside the root that point outside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    cv2.imwrite(str(root / "in" / "coffee.png"), photo_bgr("coffee")[::4, ::4])
    cv2.imwrite(str(outside / "private.png"), photo_bgr("chelsea")[::4, ::4])
    (outside / "clusters.txt").write_text("1 10 20 30\n2 200 100 50\n")
    os.symlink(outside, root / "link-to-outside")
    os.symlink(outside / "private.png", root / "in" / "private.png")  # a file symlink in an allowed folder
    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS", json.dumps([str(root)]))
    return root, outside


def conf_for(root, **changes):
    conf = {"input": [str(root / "in" / "coffee.png")], "k": 2, "max_iterations": 2, "output": str(root / "out")}
    return {**conf, **changes}


def tree(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)


def plan_error(conf) -> str:
    from kmeans_ops.params import ParamError
    from kmeans_ops.run import plan

    defaults = {"k": 16, "init": "kmeans++", "seed": 0, "max_iterations": 30, "delta": 1.0, "engine": "local",
                "batch_size": 64}
    with pytest.raises(ParamError) as caught:
        plan({**defaults, **conf}, "manual__2026-01-01T00:00:00+00:00", DAG_ID)
    return str(caught.value)


CASES = {
    "input outside": lambda root, out: {"input": [str(out / "private.png")]},
    "input through ..": lambda root, out: {"input": [str(root / "in" / ".." / ".." / "outside")]},
    "input folder symlink": lambda root, out: {"input": [str(root / "link-to-outside")]},
    "input file symlink in a folder": lambda root, out: {"input": [str(root / "in")]},
    "input pattern outside": lambda root, out: {"input": [str(out / "*.png")]},
    "input system file": lambda root, out: {"input": ["/etc/passwd"]},
    "input home": lambda root, out: {"input": ["~/.ssh/id_rsa"]},
    "output outside": lambda root, out: {"output": str(out / "results")},
    "output through symlink": lambda root, out: {"output": str(root / "link-to-outside" / "results")},
    "init outside": lambda root, out: {"init": str(out / "clusters.txt")},
    "palette file outside": lambda root, out: {"palette": str(out / "clusters.txt")},
    "keep file outside": lambda root, out: {"keep": str(out / "clusters.txt")},
    "keep file through symlink": lambda root, out: {"keep": str(root / "link-to-outside" / "clusters.txt")},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_path_param_outside_the_roots_is_refused_naming_the_param(area, case):
    root, outside = area
    changes = CASES[case](root, outside)
    message = plan_error(conf_for(root, **changes))
    param = next(iter(changes))
    assert message.startswith(f"{param}: ") and "outside the allowed roots" in message
    assert "kmeans_allowed_roots" in message and str(root) in message  # the rule, and where it comes from


@pytest.mark.parametrize("case", ["input file symlink in a folder", "output outside", "init outside"])
def test_a_dag_run_with_a_path_outside_fails_at_prepare_and_writes_nothing(airflow_db, area, case):
    root, outside = area
    before_outside, before_root = tree(outside), tree(root)
    dag_run = run_dag(DAG_ID, conf_for(root, **CASES[case](root, outside)))
    assert dag_run.state == "failed"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states["prepare"] == "failed"
    assert all(state in (None, "upstream_failed", "skipped") for task, state in states.items() if task != "prepare")
    assert tree(outside) == before_outside and tree(root) == before_root  # nothing written, inside or out
    assert not (root / "out").exists()


def test_paths_inside_the_roots_run(airflow_db, area):
    root, _ = area
    dag_run = run_dag(DAG_ID, conf_for(root, input=[str(root / "in" / "c*.png")]))
    assert dag_run.state == "success"
    assert os.path.isfile(root / "out" / "latest" / "coffee.png")


def test_resolution_rules():
    from kmeans_ops.paths import AllowedRoots

    roots = AllowedRoots(["/srv/images", "hdfs://namenode:8020/landing"], "test")
    assert roots.contains("/srv/images") and roots.contains("/srv/images/a/b.png")
    assert not roots.contains("/srv/images2/a.png")  # a prefix of the name is not a parent folder
    assert not roots.contains("/srv/images/../secrets/a.png")
    assert roots.contains("hdfs://namenode:8020/landing/day1/x.png")
    assert roots.contains("hdfs:///landing/x.png")  # HDFS I/O goes to the connection's NameNode: paths compare
    assert not roots.contains("hdfs:///landing/../user/hive/x.png")
    assert not roots.contains("hdfs:///landing2/x.png")
    assert not roots.contains("/landing/x.png")  # a local path is never inside an HDFS root
    assert not AllowedRoots([], "none").contains("/")


def test_default_roots_are_the_project_data_and_output_folders(tmp_path, monkeypatch):
    from kmeans_ops.paths import AllowedRoots

    monkeypatch.delenv("AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS")
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KMEANS_OUTPUT_ROOT")
    roots = AllowedRoots.from_settings()
    assert roots.roots == [str(tmp_path / "home" / "data"), str(tmp_path / "home" / "kmeans-output")]
    assert "not set" in roots.source
    assert roots.contains(str(tmp_path / "home" / "data" / "x.png"))
    assert not roots.contains(str(tmp_path / "elsewhere.png")) and not roots.contains("/etc/passwd")
    assert not roots.contains("hdfs:///anything")


@pytest.mark.parametrize("value, problem", [("not json", "not valid JSON"), ('{"a": 1}', "must be a JSON list"),
                                            ('["relative/folder"]', "absolute folder")])
def test_a_malformed_variable_fails_prepare_naming_it(airflow_db, area, monkeypatch, value, problem):
    from kmeans_ops.settings import SettingError, allowed_roots

    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS", value)
    with pytest.raises(SettingError, match=problem) as caught:
        allowed_roots()
    assert "kmeans_allowed_roots" in str(caught.value)
    root, _ = area
    assert run_dag(DAG_ID, conf_for(root)).state == "failed"
    assert not (root / "out").exists()


def test_latest_that_is_not_a_symlink_is_kept_and_refused(area):
    root, _ = area
    (root / "out").mkdir()
    (root / "out" / "latest").write_text("my notes")
    message = plan_error(conf_for(root))
    assert message.startswith("output: ") and "latest" in message and "not a symlink" in message
    assert (root / "out" / "latest").read_text() == "my notes"


def test_an_output_that_would_replace_an_input_is_refused(area):
    """The run's own output folder holding an input (a re-run over its own results)."""
    from kmeans_ops.run import run_key

    root, _ = area
    run_folder = root / "out" / run_key("manual__2026-01-01T00:00:00+00:00")
    run_folder.mkdir(parents=True)
    cv2.imwrite(str(run_folder / "coffee.png"), photo_bgr("coffee")[::4, ::4])
    (run_folder / "summary.json").write_text("{}")
    data = (run_folder / "coffee.png").read_bytes()
    message = plan_error(conf_for(root, input=[str(run_folder / "coffee.png")]))
    assert message.startswith("output: ") and "would replace the input" in message
    assert (run_folder / "coffee.png").read_bytes() == data


# ------------------------------------------------------------------ the nightly DAG's configuration
def nightly_run(monkeypatch, **variables):
    for name, value in variables.items():
        monkeypatch.setenv(f"AIRFLOW_VAR_{name.upper()}", value if isinstance(value, str) else json.dumps(value))
    dag_run = run_dag("kmeans_nightly", {"settle_seconds": 0})
    return dag_run, {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def test_nightly_landing_root_or_default_outside_the_roots_fails_and_records_nothing(airflow_db, area, monkeypatch):
    root, outside = area
    ledger = root / "ledger.json"
    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_LEDGER_PATH", str(ledger))
    monkeypatch.delenv("AIRFLOW_VAR_KMEANS_NIGHTLY_DEFAULTS", raising=False)
    for variables in ({"kmeans_landing_roots": [str(outside)]},
                      {"kmeans_landing_roots": [str(root / "in" / ".." / ".." / "outside")]},
                      {"kmeans_landing_roots": [str(root / "in")],
                       "kmeans_nightly_defaults": {"output": str(outside / "results")}}):
        dag_run, states = nightly_run(monkeypatch, **variables)
        assert dag_run.state == "failed" and states["scan"] == "failed", variables
        assert not ledger.exists() and not (outside / "results").exists()


def test_nightly_skips_a_landed_symlink_that_points_outside(airflow_db, area, monkeypatch):
    """root/in holds coffee.png and private.png, a symlink to a file outside the roots."""
    root, _ = area
    from kmeans_ops import ledger as L
    from kmeans_ops.paths import AllowedRoots

    found = L.scan([str(root / "in")], settle_seconds=0, allowed=AllowedRoots.from_settings())
    assert [os.path.basename(f["path"]) for f in found] == ["coffee.png"]
    # without the allow-list (the CLI has none) the symlinked file is listed too
    assert len(L.scan([str(root / "in")], settle_seconds=0)) == 2
