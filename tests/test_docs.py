"""The docs site (MkDocs + Material, ``mkdocs.yml`` and ``docs/``): it builds with warnings as
errors, its generated reference pages hold every CLI option and every DAG param (as Airflow itself
loads them), and a broken link, a broken anchor or a missing page fails the build.

The docs tools live in ``.venv-docs`` (pins: docs/requirements.txt). When it is missing or older
than its pins, ``make docs-venv`` builds it first: nothing here is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from conftest import ROOT, load_dag

MKDOCS = os.path.join(ROOT, ".venv-docs", "bin", "mkdocs")
DAG_IDS = ("kmeans_image_clustering", "kmeans_nightly")


def _gen_reference():
    """docs/gen_reference.py, the generator the docs build runs as an MkDocs hook."""
    import sys

    if "gen_reference" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gen_reference", os.path.join(ROOT, "docs", "gen_reference.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["gen_reference"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["gen_reference"]


def squash(value: str) -> str:
    return " ".join(str(value).split())


def build(project: str, site: str) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the project folder ``project`` into ``site``."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([MKDOCS, "build", "--strict", "--site-dir", site], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


class Page(HTMLParser):
    """The text of a built page: its tables (rows of cell texts), the ids and every element's text."""

    def __init__(self, path: str):
        super().__init__(convert_charrefs=True)
        self.tables, self.ids, self.chunks = [], {}, []
        self._cell = None
        self._id_stack = []
        self.feed(open(path, encoding="utf-8").read())
        self.text = squash(" ".join(self.chunks))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids[a["id"]] = tag
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []
            self._id_stack = [a["id"]] if a.get("id") else []
        elif self._cell is not None and a.get("id"):
            self._id_stack.append(a["id"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append({"text": squash("".join(self._cell)), "ids": self._id_stack})
            self._cell = None

    def handle_data(self, data):
        self.chunks.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def row_with_id(self, element_id: str) -> list[dict]:
        for table in self.tables:
            for row in table:
                if row and element_id in row[0]["ids"]:
                    return row
        raise AssertionError(f"no table row holds the element #{element_id}")


@pytest.fixture(scope="session")
def docs_venv():
    """.venv-docs with the pinned docs tools (make decides whether anything is to do)."""
    result = subprocess.run(["make", "--no-print-directory", "docs-venv"], cwd=ROOT, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, f"make docs-venv failed:\n{result.stdout}\n{result.stderr}"
    assert os.access(MKDOCS, os.X_OK), MKDOCS
    return MKDOCS


@pytest.fixture(scope="module")
def site(docs_venv, tmp_path_factory):
    """The site of this checkout, built with --strict: it must build with no warning at all."""
    out = str(tmp_path_factory.mktemp("site"))
    result = build(ROOT, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def page(site: str, doc: str) -> Page:
    """The built page of the doc file ``doc`` (``reference/cli.md`` -> ``reference/cli/index.html``)."""
    stem = doc[:-3]
    path = os.path.join(site, "index.html" if stem == "index" else os.path.join(stem, "index.html"))
    assert os.path.exists(path), f"{doc} was not built"
    return Page(path)


def nav_docs() -> list[str]:
    import yaml

    config = yaml.safe_load(open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8"))
    found = []

    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            walk(value) if isinstance(value, list) else found.append(value)

    walk(config["nav"])
    return found


# ------------------------------------------------------------------------------ the site itself
def test_every_page_is_built_with_its_pictures(site):
    docs = nav_docs()
    for expected in ("index.md", "quickstart.md", "cli.md", "airflow.md", "nightly.md", "hadoop.md", "deployment.md",
                     "security.md", "how-it-works.md", "benchmarks.md", "development.md", "reference/cli.md",
                     "reference/dag-params.md", "reference/settings.md"):
        assert expected in docs, f"{expected} is not in the nav of mkdocs.yml"
    for doc in docs:
        page(site, doc)
    # the pictures are real screenshots of a report, and every one a page shows is in the site
    index = open(os.path.join(site, "index.html"), encoding="utf-8").read()
    pictures = re.findall(r'<img[^>]+src="(images/[^"]+\.png)"', index)
    assert "images/report.png" in pictures
    for picture in pictures:
        with open(os.path.join(site, picture), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    # nothing but pages and their assets: the generator, the screenshot script and the pins stay out
    for name in ("gen_reference.py", "screenshot.py", "requirements.txt"):
        assert not os.path.exists(os.path.join(site, name)), name


def test_reference_pages_are_generated_not_committed():
    """Generated at build time: no copy in docs/ that could go stale."""
    for doc in _gen_reference().PAGES.values():
        assert not os.path.exists(os.path.join(ROOT, "docs", doc)), f"docs/{doc} should not exist: it is generated"


# ------------------------------------------------------------------------------ CLI reference
def test_cli_reference_lists_every_option_of_build_parser(site):
    import argparse

    from kmeans_ops.cli import build_parser

    text = page(site, "reference/cli.md")
    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subparsers and set(subparsers[0].choices) == {"quantize", "samples"}
    checked = 0
    for name, sub in subparsers[0].choices.items():
        assert name in text.ids, f"no section for the subcommand {name}"
        rows = [row for table in text.tables for row in table[1:]]
        for action in sub._actions:
            names = action.option_strings or [action.metavar or action.dest]
            matching = [row for row in rows if all(n in row[0]["text"].replace(",", " ").split() for n in names)]
            assert matching, f"{name}: {names} is not in the CLI reference"
            row = matching[0]
            help_text = squash(sub._get_formatter()._expand_help(action))
            assert help_text in row[2]["text"], f"{name} {names}: help not shown"
            if action.required:
                assert row[1]["text"] == "required"
            elif action.default not in (None, False, argparse.SUPPRESS):
                assert str(action.default) in row[1]["text"], f"{name} {names}: default {action.default!r} not shown"
            for choice in action.choices or ():
                assert choice in row[2]["text"]
            checked += 1
    assert checked >= 17  # quantize's 15 arguments with -h, samples' folder and -h


# ------------------------------------------------------------------------------ DAG params
@pytest.fixture(scope="module")
def dags(airflow_db):
    return {dag_id: load_dag(dag_id) for dag_id in DAG_IDS}


def test_params_read_by_the_generator_equal_what_airflow_loads(dags):
    """The generator reads the DAG files with ast (no Airflow at docs build time): it must find
    exactly the Params that Airflow's DagBag loads from them, in this environment."""
    read = {d.dag_id: d for d in _gen_reference().read_dags(clean_env=False)}
    assert set(read) == set(DAG_IDS)
    for dag_id, dag in dags.items():
        real = dag.params
        assert [p.name for p in read[dag_id].params] == list(real.keys()), dag_id
        for p in read[dag_id].params:
            param = real.get_param(p.name)
            assert p.default == param.value, (dag_id, p.name)
            assert p.schema == param.schema, (dag_id, p.name)
            assert p.description == param.description, (dag_id, p.name)
        assert read[dag_id].schedule == dag.schedule, dag_id


def test_dag_params_reference_lists_every_param(site, dags):
    text = page(site, "reference/dag-params.md")
    read = {d.dag_id: d for d in _gen_reference().read_dags(clean_env=False)}
    for dag_id, dag in dags.items():
        assert dag_id in text.ids, f"no section for the DAG {dag_id}"
        for name in dag.params.keys():
            param = dag.params.get_param(name)
            schema = param.schema
            row = text.row_with_id(f"{dag_id}-{name}")
            cells = {key: row[i]["text"] for i, key in enumerate(("param", "title", "type", "default", "limits",
                                                                   "description"))}
            assert cells["param"] == name
            assert cells["title"] == schema.get("title", "")
            kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            assert all(kind in cells["type"] for kind in kinds)
            from_settings = next(p for p in read[dag_id].params if p.name == name).from_settings
            if "default" in from_settings:  # a default read from a setting: the page names the setting
                assert "setting KMEANS_" in cells["default"], (name, cells["default"])
            elif param.value == [] and schema.get("minItems"):
                assert cells["default"] == "required"
            else:
                shown = param.value if isinstance(param.value, str) else json.dumps(param.value)
                assert shown in cells["default"], (name, cells["default"])
            for key in ("minimum", "maximum"):
                if key in schema:
                    assert str(schema[key]) in cells["limits"], (name, key)
            for value in schema.get("enum", []):
                assert value in cells["limits"], (name, value)
            description = schema.get("description_md") or param.description or ""
            assert squash(description.replace("`", "")) in cells["description"], name


# ------------------------------------------------------------------------------ settings
def test_settings_reference_lists_every_variable(site):
    from kmeans_ops import settings

    text = page(site, "reference/settings.md")
    table_rows, _ = _gen_reference().settings_table(settings)
    documented = [name for name, _, _ in table_rows]
    assert "KMEANS_MAX_PIXELS" in documented and "HADOOP_CONF_DIR" in documented
    read_in_code = set(re.findall(r'\benv(?:_int)?\(\s*"([A-Z][A-Z0-9_]*)"', open(settings.__file__).read()))
    for name in set(documented) | read_in_code:
        assert name.lower() in text.ids, f"{name} is not on the settings page"
    for name, meaning, _ in table_rows:
        assert squash(meaning) in text.row_with_id(name.lower())[1]["text"]
    for constant in ("MAX_K", "MAX_DELTA", "MAX_ITER", "VAR_ALLOWED_ROOTS"):
        assert constant in text.text


# ------------------------------------------------------------------------------ failing builds
def copy_project(target: str) -> str:
    """What a docs build reads, copied: mkdocs.yml, docs/, and the code the references come from."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    os.makedirs(target)
    shutil.copy(os.path.join(ROOT, "mkdocs.yml"), target)
    for folder in ("docs", "kmeans_ops", "dags"):
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(target, folder), ignore=ignore)
    return target


def test_a_copy_of_the_docs_builds(docs_venv, tmp_path):
    """The copy the next tests break builds as it is, so their failures come from what they change."""
    project = copy_project(str(tmp_path / "project"))
    result = build(project, str(tmp_path / "site"))
    assert result.returncode == 0, result.stdout + result.stderr


def _append(path, line):
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"\n{line}\n")


BREAKAGES = {
    "a link to a missing page": (lambda p: _append(f"{p}/docs/index.md", "See [the FAQ](faq.md)."), "faq.md"),
    "a link to a missing anchor": (lambda p: _append(f"{p}/docs/quickstart.md", "[Up](security.md#no-such-section)"),
                                   "no-such-section"),
    "a link to a missing option of the generated CLI page": (
        lambda p: _append(f"{p}/docs/cli.md", "[the flag](reference/cli.md#no-such-subcommand)"), "no-such-subcommand"),
    "a page of the nav removed": (lambda p: os.remove(f"{p}/docs/benchmarks.md"), "benchmarks.md"),
    "a page left out of the nav": (lambda p: open(f"{p}/docs/orphan.md", "w").write("# Orphan\n"), "orphan.md"),
    "a missing picture": (lambda p: _append(f"{p}/docs/index.md", "![gone](images/gone.png)"), "images/gone.png"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_docs_build_fails(docs_venv, tmp_path, breakage):
    project = copy_project(str(tmp_path / "project"))
    change, named = BREAKAGES[breakage]
    change(project)
    result = build(project, str(tmp_path / "site"))
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{breakage}: the strict build passed\n{output}"
    assert re.search(r"Aborted with \d+ warnings? in strict mode", output), output
    assert "WARNING" in output and named in output[output.index("WARNING"):], output  # the warning names it


def test_a_new_cli_option_reaches_the_reference_at_the_next_build(docs_venv, tmp_path):
    """Nothing to regenerate by hand: an option added to build_parser is on the page of the next build."""
    project = copy_project(str(tmp_path / "project"))
    cli = os.path.join(project, "kmeans_ops", "cli.py")
    source = open(cli, encoding="utf-8").read()
    anchor = '    q.add_argument("-q", "--quiet"'
    assert anchor in source
    with open(cli, "w", encoding="utf-8") as handle:
        handle.write(source.replace(anchor, '    q.add_argument("--brand-new-option", help="a brand new option")\n'
                                            + anchor, 1))
    result = build(project, str(tmp_path / "site"))
    assert result.returncode == 0, result.stdout + result.stderr
    built = page(str(tmp_path / "site"), "reference/cli.md")
    assert "--brand-new-option BRAND_NEW_OPTION" in built.text and "a brand new option" in built.text
