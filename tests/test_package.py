"""The distribution as a team installs it: a wheel built with pip (PEP 517, setuptools), installed
into an empty folder, used from outside the checkout: the console script quantizes a photo, and a
fresh Airflow with no plugins folder and only the DAG file finds the plugin and the provider,
runs the DAG and serves its results."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT
from test_ui_results import AIRFLOW, Site, airflow, free_port, serving, write_small_photos

DAG = "kmeans_image_clustering"


def clean_env(**extra) -> dict:
    """This process's environment without anything pointing at the checkout or its Airflow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KMEANS_", "PYTEST_AIRFLOW", "PYTHONPATH"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """``pip wheel`` of a copy of the checkout's files (the build's egg-info stays in the copy)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(source / name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w", str(out)],
                   check=True, capture_output=True, timeout=600)
    (built,) = out.glob("kmeans_colours-*.whl")
    return str(built)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> str:
    target = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), wheel],
                   check=True, capture_output=True, timeout=600)
    return str(target)


def test_wheel_declares_console_script_provider_plugin_and_data(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(info).decode()
    assert "[console_scripts]\nkmeans-colours = kmeans_ops.cli:main" in entry_points
    assert "[apache_airflow_provider]\nprovider_info = kmeans_plugin.provider:get_provider_info" in entry_points
    assert "[airflow.plugins]\nkmeans = kmeans_plugin.plugin:KMeansPlugin" in entry_points
    for data in ("kmeans_ops/templates/report.html.j2", "kmeans_ops/templates/report.css",
                 "kmeans_ops/engines/KMeansSubmitter.java", "kmeans_plugin/templates/results.html",
                 "kmeans_plugin/example_dags/kmeans_image_clustering.py", "kmeans_plugin/example_dags/kmeans_nightly.py"):
        assert data in names, data


def test_installed_wheel_quantizes_a_photo_outside_the_checkout(installed, tmp_path):
    photos = tmp_path / "photos"
    write_small_photos(photos)
    env = clean_env(PYTHONPATH=installed)
    where = subprocess.run([sys.executable, "-c", "import kmeans_ops, kmeans_plugin; print(kmeans_ops.__file__); "
                            "print(kmeans_plugin.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(installed) for line in where.stdout.split()), where.stdout
    done = subprocess.run([os.path.join(installed, "bin", "kmeans-colours"), "quantize", str(photos / "coffee.png"),
                           "-k", "4", "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.load(open(tmp_path / "out" / "coffee.json"))
    assert figures["k"] == 4 and len(figures["palette_rgb"]) == 4
    assert (tmp_path / "out" / "coffee.png").stat().st_size > 0
    # python -m kmeans_ops is kept
    again = subprocess.run([sys.executable, "-m", "kmeans_ops", "quantize", "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "--out" in again.stdout


def test_fresh_airflow_with_only_the_package(installed, tmp_path):
    """No plugins folder content, the DAG file copied into an empty dags folder: Airflow lists the
    provider and the plugin, `airflow dags test` succeeds and the results app serves the report."""
    home, dags, plugins, out = (str(tmp_path / name) for name in ("home", "dags", "plugins", "out"))
    for folder in (dags, plugins, out):
        os.makedirs(folder)
    shutil.copy(os.path.join(installed, "kmeans_plugin", "example_dags", f"{DAG}.py"), dags)
    photos = str(tmp_path / "photos")
    write_small_photos(photos)
    env = clean_env(PYTHONPATH=installed, AIRFLOW_HOME=home, AIRFLOW__CORE__DAGS_FOLDER=dags,
                    AIRFLOW__CORE__PLUGINS_FOLDER=plugins, AIRFLOW__CORE__LOAD_EXAMPLES="False", KMEANS_HOME=home,
                    AIRFLOW_VAR_KMEANS_ALLOWED_ROOTS=json.dumps([photos, out]))
    airflow(env, "db", "migrate")
    providers = airflow(env, "providers", "list", "-o", "json").stdout
    assert any(p["package_name"] == "kmeans-colours" for p in json.loads(providers[providers.index("["):])), providers
    listed = airflow(env, "plugins", "-o", "json").stdout
    plugins_json = json.loads(listed[listed.index("["):])
    (ours,) = [p for p in plugins_json if p["name"] == "kmeans"]
    assert "kmeans_plugin" in json.dumps(ours)
    airflow(env, "dags", "test", DAG, "-c", json.dumps({"input": [photos], "output": out, "k": 4}), timeout=900)
    site = Site(free_port(), env, tmp_path, [photos, out])
    with serving(site, home):
        (run,) = [r["dag_run_id"] for r in site.api(f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]]
        status, headers, body = site.request(site.run_url(DAG, run))
        assert status == 200 and headers["content-type"].startswith("text/html"), (status, body[:300])
        assert b"coffee" in body and b"china" in body
    assert AIRFLOW  # the venv's own Airflow ran every command


def test_the_checkout_registers_the_plugin_once(tmp_path):
    """bin/airflow puts the checkout on PYTHONPATH: no second copy of the distribution may be found
    there (the editable build's kmeans_colours.egg-info, which `make setup` removes), or its
    airflow.plugins entry point registers the plugin again ("Plugin 'kmeans' already registered")."""
    env = {**clean_env(AIRFLOW_HOME=str(tmp_path / "home")), "PYTHONPATH": ROOT}
    code = ("from importlib.metadata import distributions\n"
            "print(sorted(str(d._path) for d in distributions() if (d.metadata['Name'] or '') == 'kmeans-colours'))\n")
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    copies = json.loads(found.stdout.replace("'", '"'))
    assert len(copies) == 1 and copies[0].endswith(".dist-info"), f"{copies}: run make setup (or remove the egg-info)"
    listed = subprocess.run([os.path.join(ROOT, "bin", "airflow"), "plugins", "-o", "json"], cwd=tmp_path,
                            env={**env, "AIRFLOW_HOME": str(tmp_path / "home")}, capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "already registered" not in listed.stdout + listed.stderr
    assert '"name": "kmeans"' in listed.stdout
