"""No file content in any message: a bad points, clusters or init file is named with its line
number and what was expected, never quoted (CLI, logs, XCom, summary.json, report.html, outputs).
File names with control characters stay on one line."""

from __future__ import annotations

import json
import os
import shutil
import uuid

import cv2
import pytest

from conftest import photo_bgr, run_cli, run_dag
from kmeans_ops import formats
from kmeans_ops.errors import InputError, shown

DAG_ID = "kmeans_image_clustering"


@pytest.fixture
def secret():
    """A password-like line, different in every test (so no other test's output can hold it)."""
    return f"password=hunter2-{uuid.uuid4().hex}"


def leaks(secret: str):
    """The pieces of ``secret`` that must appear nowhere (the whole line, and its random part)."""
    return [secret, secret.split("-", 1)[1]]


def assert_not_in_text(text: str, secret: str, where: str):
    for piece in leaks(secret):
        assert piece not in text, f"the secret appears in {where}"


def assert_not_in_folder(folder, secret: str):
    """No file under ``folder`` (any depth) holds the secret; returns how many files were read."""
    read = 0
    for top, _, names in os.walk(folder):
        for name in names:
            data = open(os.path.join(top, name), "rb").read()
            read += 1
            for piece in leaks(secret):
                assert piece.encode() not in data, f"the secret appears in {os.path.join(top, name)}"
    return read


# ------------------------------------------------------------------ shown(): one printable line
@pytest.mark.parametrize(
    "name,expected",
    [
        ("plain/photo.png", "plain/photo.png"),
        ("bad\nname.txt", "bad\\nname.txt"),
        ("tab\there.txt", "tab\\there.txt"),
        ("cr\rhere\x1b[31m.txt", "cr\\rhere\\x1b[31m.txt"),
        ("sep\u2028and\x85nel.txt", "sep\\u2028and\\x85nel.txt"),
        ("Ärger/日本語 café.png", "Ärger/日本語 café.png"),  # printable letters are kept
        (b"raw\xff\xfe.png".decode("utf-8", "surrogateescape"), "raw\\xff\\xfe.png"),
        (b"bytes\n\xff.png", "bytes\\n\\xff.png"),
    ],
)
def test_shown_makes_any_name_one_printable_line(name, expected):
    text = shown(name)
    assert text == expected
    assert len(text.splitlines()) == 1 and text.isprintable()
    text.encode("utf-8")  # never raises: no lone surrogates left


def test_input_error_is_one_line_whatever_the_name():
    name = b"a\nb\tc\r\xff.txt".decode("utf-8", "surrogateescape")
    err = InputError(name, "cannot read it\nreally")
    assert str(err) == "a\\nb\\tc\\r\\xff.txt: cannot read it\\nreally"
    assert err.path == name and err.problem == "cannot read it\nreally"  # kept as given, for callers


# ------------------------------------------------------------------ formats: every error path
POINTS_GOOD = b"img\t001 002 003 0000000004\n"


def bad_points_lines(secret: str):
    """(case, bad line, the piece of it that must not be quoted, expected problem)."""
    hex_ = secret.split("-", 1)[1]
    return [
        ("too short", f"pw={hex_[:10]}", hex_[:10], "line too short"),
        ("no tab", secret, secret, "no tab before the colour and count"),
        ("malformed", "img\t" + hex_[-22:], hex_[-22:], "malformed colour or count"),
        ("space in id", f"pw {hex_[:12]}\t001 002 003 0000000001", hex_[:12], "whitespace in image id"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in bad_points_lines("x-y")])
def test_weighted_points_error_has_file_and_line_not_the_line(secret, case):
    _, line, piece, why = next(c for c in bad_points_lines(secret) if c[0] == case)
    data = POINTS_GOOD * 2 + line.encode() + b"\n" + POINTS_GOOD
    with pytest.raises(InputError) as err:
        formats.parse_points(data, "some/points.tsv")
    message = str(err.value)
    assert message.startswith(f"some/points.tsv: line 3: {why}; expected ")
    assert "<image id>\\t<BBB> <GGG> <RRR> <count>" in message  # what was expected
    assert piece not in message and "pw" not in message


def test_weighted_points_space_in_id_one_image_fast_path(secret):
    hex_ = secret.split("-", 1)[1]
    line = f"pw {hex_[:12]}\t001 002 003 0000000001\n".encode()
    with pytest.raises(InputError) as err:
        formats.parse_points(line * 3, "p.tsv")
    assert str(err.value).startswith("p.tsv: line 1: whitespace in image id; expected ")
    assert hex_[:12] not in str(err.value)


@pytest.mark.parametrize(
    "line,why",
    [
        (b"img\t987 002 003 0000000001", "colour value above 255"),
        (b"img\t001 002 003 0000000000", "count must be >= 1"),
    ],
)
def test_weighted_points_numbers_are_not_quoted(line, why):
    with pytest.raises(InputError) as err:
        formats.parse_points(POINTS_GOOD + line + b"\n", "p.tsv")
    message = str(err.value)
    assert message.startswith("p.tsv: line 2: ") and why in message
    assert "987" not in message and "0000000000" not in message


@pytest.mark.parametrize("same_length", [True, False], ids=["one-image fast path", "general path"])
def test_weighted_points_non_utf8_id(secret, same_length):
    bad_id = b"\xff\xfe" + secret.encode()[:10]
    first = bad_id if same_length else b"img"
    data = first + b"\t001 002 003 0000000004\n" + bad_id + b"\t001 002 003 0000000001\n"
    with pytest.raises(InputError) as err:
        formats.parse_points(data, "p.tsv")
    message = str(err.value)
    line = 1 if same_length else 2
    assert message.startswith(f"p.tsv: line {line}: image id is not valid UTF-8")
    assert "\\xff" not in message and "password" not in message


def test_read_points_file_with_a_secret_names_the_file(tmp_path, secret):
    path = tmp_path / "points.tsv"
    path.write_bytes(POINTS_GOOD + b"img\t" + secret.encode()[:22] + b"\n")
    with pytest.raises(InputError) as err:
        formats.read_points(str(path))
    assert str(err.value).startswith(f"{path}: line 2: ")
    assert_not_in_text(str(err.value), secret, "the message")


# seed points.txt and clusters.txt: a header of good, blank and comment lines, then the bad line
SEED_POINTS_HEAD = b"1.0 2.0 3.0\n\n# a comment\n4 5 6\n"  # the bad line is line 5
CLUSTERS_HEAD = b"1 0 0 0\n\n# a comment\n2 10 20 30\n"  # the bad line is line 5 (label 3)


def seed_cases(secret: str):
    """(name, reader, content, expected problem) of each seed-format error; the bad line is line 5."""
    s = secret.encode()
    return [
        ("points: text", "points", SEED_POINTS_HEAD + s + b"\n", "expected 3 columns of numbers (B G R)"),
        ("points: text after numbers", "points", SEED_POINTS_HEAD + b"1 2 " + s + b"\n", "expected 3 columns"),
        ("points: 4 columns", "points", SEED_POINTS_HEAD + b"1 2 3 4\n", "expected 3 columns"),
        ("points: 2 columns", "points", SEED_POINTS_HEAD + b"1 2\n", "expected 3 columns"),
        ("points: not whole", "points", SEED_POINTS_HEAD + b"1 2 123.456789\n", "whole numbers in 0..255"),
        ("points: out of range", "points", SEED_POINTS_HEAD + b"1 2 987654\n", "whole numbers in 0..255"),
        ("points: negative", "points", SEED_POINTS_HEAD + b"1 -2 3\n", "whole numbers in 0..255"),
        ("points: nan", "points", SEED_POINTS_HEAD + b"1 nan 3\n", "expected finite numbers"),
        ("points: non-UTF-8", "points", SEED_POINTS_HEAD + b"\xff\xfe " + s + b"\n", "expected 3 columns"),
        ("points: NUL separated", "points", SEED_POINTS_HEAD + s + b"\x00HOME=/root\x00\n", "expected 3 columns"),
        ("clusters: text", "clusters", CLUSTERS_HEAD + s + b"\n", "expected 4 columns of numbers (label B G R)"),
        ("clusters: 3 columns", "clusters", CLUSTERS_HEAD + b"3 1 2\n", "expected 4 columns"),
        ("clusters: 5 columns", "clusters", CLUSTERS_HEAD + b"3 1 2 3 4\n", "expected 4 columns"),
        ("clusters: label too big", "clusters", CLUSTERS_HEAD + b"987 1 2 3\n", "cluster labels must be 1..3"),
        ("clusters: label repeated", "clusters", CLUSTERS_HEAD + b"1 1 2 3\n", "cluster labels must be 1..3"),
        ("clusters: label not whole", "clusters", CLUSTERS_HEAD + b"2.75 1 2 3\n", "cluster labels must be 1..3"),
        ("clusters: out of range", "clusters", CLUSTERS_HEAD + b"3 1 2 987654.5\n", "centroid values must lie in 0..255"),
        ("clusters: inf", "clusters", CLUSTERS_HEAD + b"3 1 inf 3\n", "expected finite numbers"),
        ("clusters: non-UTF-8", "clusters", CLUSTERS_HEAD + b"3 \xff\xfe" + s + b" 1 2\n", "expected 4 columns"),
        ("clusters: CRLF", "clusters", CLUSTERS_HEAD.replace(b"\n", b"\r\n") + s + b"\r\n", "expected 4 columns"),
    ]


CASE_NAMES = [case[0] for case in seed_cases("x")]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_seed_file_error_has_file_and_line_not_the_content(tmp_path, secret, case):
    _, kind, content, why = next(c for c in seed_cases(secret) if c[0] == case)
    path = tmp_path / f"{kind}.txt"
    path.write_bytes(content)
    read = formats.read_seed_points if kind == "points" else formats.read_clusters
    with pytest.raises(InputError) as err:
        read(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: line 5: "), message
    assert why in message
    assert_not_in_text(message, secret, "the message")
    for found in ("987", "123.45", "nan", "inf", "HOME", "\\xff", "2.75"):
        assert found not in message.split(": ", 1)[1], f"{found!r} quoted in {message!r}"
    assert len(message.splitlines()) == 1


def test_parse_clusters_names_its_source(secret):
    with pytest.raises(InputError) as err:
        formats.parse_clusters(b"1 0 0 0\n" + secret.encode() + b"\n", "hdfs:///work/clusters-003.txt")
    assert str(err.value).startswith("hdfs:///work/clusters-003.txt: line 2: expected 4 columns")
    assert_not_in_text(str(err.value), secret, "the message")


def test_bad_line_far_down_a_big_file_is_found_quickly(tmp_path, secret):
    """The line number comes from NumPy blocks, not a Python loop over the whole file."""
    import time

    path = tmp_path / "points.txt"
    good = b"10.0 20.0 30.0\n" * 300_000
    path.write_bytes(good + b"1 2 3\n" + secret.encode() + b"\n")
    started = time.perf_counter()
    with pytest.raises(InputError) as err:
        formats.read_seed_points(str(path))
    assert str(err.value) == f"{path}: line 300002: expected 3 columns of numbers (B G R)"
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("content,why", [(b"", "is empty"), (b"\n# only a comment\n\n", "is empty")])
def test_empty_seed_files(tmp_path, content, why):
    path = tmp_path / "clusters.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=why):
        formats.read_clusters(str(path))


def test_unreadable_clusters_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as err:
        formats.read_clusters(str(tmp_path))  # a folder
    assert str(err.value).startswith(f"{tmp_path}: cannot read clusters file (")


def test_good_seed_files_still_parse_with_blank_and_comment_lines():
    centroids = formats.parse_clusters(b"2 4 5 6\r\n\n# note\n1 1 2 3 # first\n", "c")
    assert centroids.tolist() == [[1, 2, 3], [4, 5, 6]]
    table = formats.parse_seed_points(b"1 2 3\n\n1 2 3\n0 0 0", "p")
    assert table.counts.tolist() == [1, 2]


# ------------------------------------------------------------------ through the CLI
@pytest.fixture
def good_image(photo_dir, tmp_path):
    """A real photo (china.jpg, as shipped by scikit-learn) copied next to the secret file."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo_dir / "china.jpg", folder / "china.jpg")
    return folder / "china.jpg"


SECRET_FILES = {
    "first line": lambda s: (s + "\n").encode(),
    "after good lines": lambda s: ("1 2 3\n4 5 6\n" + s + " 7 8\n").encode(),
    "environ-like": lambda s: b"PATH=/usr/bin\x00" + s.encode() + b"\x00HOME=/root\x00",
    "not UTF-8": lambda s: b"\xff\xfe" + s.encode() + b"\n",
}


@pytest.mark.parametrize("content", SECRET_FILES, ids=list(SECRET_FILES))
def test_cli_secret_txt_input_is_not_quoted_and_the_image_is_done(good_image, tmp_path, secret, capfd, content):
    creds = good_image.parent / "creds.txt"
    creds.write_bytes(SECRET_FILES[content](secret))
    out = tmp_path / "out"
    status, err = run_cli("quantize", good_image, creds, "-k", 4, "--max-iter", 5, "--out", out)
    captured = capfd.readouterr()
    assert status == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {creds}: line ")
    for text, where in ((err, "stderr"), (captured.out, "stdout"), (captured.err, "stderr (fd)")):
        assert_not_in_text(text, secret, where)
    assert sorted(os.listdir(out)) == ["china.json", "china.png"]  # the good image is done
    assert json.load(open(out / "china.json"))["k"] == 4
    assert assert_not_in_folder(out, secret) == 2
    assert creds.read_bytes() == SECRET_FILES[content](secret)  # the input is untouched


@pytest.mark.parametrize("with_k", [False, True], ids=["k from the file", "-k given"])
def test_cli_secret_init_file_is_not_quoted(good_image, tmp_path, secret, capfd, with_k):
    creds = tmp_path / "creds.txt"
    creds.write_text(f"{secret}\nuser=admin\n")
    out = tmp_path / "out"
    k = ["-k", 4] if with_k else []
    status, err = run_cli("quantize", good_image, "--init", creds, *k, "--out", out)
    captured = capfd.readouterr()
    # without -k the file is read once to find K: refused before anything runs (exit 2); with -k it
    # is refused once (exit 2) or for the image that needs it (exit 1): never a success
    assert status == 2 if not with_k else status in (1, 2), err
    assert f"{creds}: line 1: expected 4 columns of numbers (label B G R)" in err
    for text, where in ((err, "stderr"), (captured.out, "stdout"), (captured.err, "stderr (fd)")):
        assert_not_in_text(text, secret, where)
    assert "user=admin" not in err
    if out.exists():
        assert not [n for n in os.listdir(out) if n.endswith(".png")]
        assert_not_in_folder(out, secret)


@pytest.mark.parametrize("name", ["bad\nname.txt", "bad\ttab.txt", "bad\r\x1bname.png", "nl\n\u2028.png"])
def test_cli_error_for_a_name_with_control_characters_is_one_line(good_image, tmp_path, secret, name):
    bad = good_image.parent / name
    bad.write_bytes((secret + "\n").encode())  # neither an image nor a points file
    out = tmp_path / "out"
    status, err = run_cli("quantize", good_image, bad, "-k", 3, "--max-iter", 3, "--out", out, "-q")
    assert status == 1
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {shown(str(bad))}: ")
    assert len(lines) == 2 and lines[1].startswith("1 of 2 image(s) done")  # the error and the summary only
    assert_not_in_text(err, secret, "stderr")
    assert os.path.exists(out / "china.png")


def test_cli_error_for_a_name_that_is_not_utf8(good_image, tmp_path, secret):
    folder = os.fsencode(good_image.parent)
    bad = os.fsdecode(folder + b"/bad\xff\xfe.txt")
    with open(bad, "wb") as handle:
        handle.write((secret + "\n").encode())
    status, err = run_cli("quantize", good_image, bad, "-k", 3, "--max-iter", 3, "--out", tmp_path / "out", "-q")
    assert status == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad\\xff\\xfe.txt: line 1: " in errors[0]
    errors[0].encode("utf-8")  # printable anywhere
    assert_not_in_text(err, secret, "stderr")


# ------------------------------------------------------------------ through the DAG (dag.test)
@pytest.fixture
def dag_inputs(tmp_path):
    """Two real photos (downscaled, as the DAG tests do) in a folder under the allowed roots."""
    folder = tmp_path / "dag-in"
    folder.mkdir()
    cv2.imwrite(str(folder / "coffee.png"), photo_bgr("coffee")[::3, ::3])
    cv2.imwrite(str(folder / "chelsea.png"), photo_bgr("chelsea")[::3, ::3])
    return folder


def xcom_texts(dag_run) -> list[str]:
    """Every XCom value of the run, as stored in the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_run.dag_id,
                                               XComModel.run_id == dag_run.run_id).all()
        return [json.dumps(row.value) if not isinstance(row.value, str) else row.value for row in rows]


def metadata_db_files() -> list[str]:
    """The SQLite metadata database of this session and its journal files, if present."""
    from airflow.configuration import conf

    url = conf.get("database", "sql_alchemy_conn")
    assert url.startswith("sqlite:///"), url
    path = url[len("sqlite:///"):].split("?")[0]
    return [p for p in (path, path + "-wal", path + "-journal") if os.path.exists(p)]


def assert_secret_nowhere_in_the_run(dag_run, secret, capfd, caplog, output, xcoms_expected=True):
    captured = capfd.readouterr()
    assert_not_in_text(captured.out + captured.err, secret, "stdout/stderr")
    assert_not_in_text(caplog.text, secret, "the log records")
    logs = os.path.join(os.environ["AIRFLOW_HOME"], "logs")
    if os.path.isdir(logs):
        assert_not_in_folder(logs, secret)
    values = xcom_texts(dag_run)
    assert bool(values) == xcoms_expected  # the run's XComs were read (none when prepare failed)
    for value in values:
        assert_not_in_text(value, secret, "an XCom value")
    for database in metadata_db_files():  # every table: XCom, task instances, notes, log records
        for piece in leaks(secret):
            assert piece.encode() not in open(database, "rb").read(), f"the secret is stored in {database}"
    if os.path.exists(output):
        assert_not_in_folder(output, secret)
    return captured


def test_dag_secret_txt_input_next_to_good_images(airflow_db, dag_inputs, tmp_path, secret, capfd, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    creds = tmp_path / "creds.txt"
    creds.write_text(f"{secret}\n1 2 3\n")
    output = tmp_path / "out"
    conf = {"input": [str(dag_inputs), str(creds)], "k": 4, "max_iterations": 3, "output": str(output)}
    dag_run = run_dag(DAG_ID, conf)
    assert dag_run.state == "success"
    from kmeans_ops.run import run_key

    folder = output / run_key(dag_run.run_id)
    assert {"chelsea.png", "coffee.png", "summary.json", "report.html"} <= set(os.listdir(folder))
    summary = json.load(open(folder / "summary.json"))
    [failure] = summary["failures"]
    assert os.path.basename(failure["source"]) == "creds.txt"
    assert failure["error"].endswith("creds.txt: line 1: expected 3 columns of numbers (B G R)")
    assert "creds.txt" in open(folder / "report.html", encoding="utf-8").read()
    captured = assert_secret_nowhere_in_the_run(dag_run, secret, capfd, caplog, output)
    assert "creds.txt: line 1" in captured.out + captured.err + caplog.text  # the failure was reported
    assert creds.read_text() == f"{secret}\n1 2 3\n"


def test_dag_secret_init_file(airflow_db, dag_inputs, tmp_path, secret, capfd, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    creds = tmp_path / "creds.txt"
    creds.write_text(f"{secret}\nuser=admin\n")
    output = tmp_path / "out"
    conf = {"input": [str(dag_inputs)], "init": str(creds), "k": 4, "max_iterations": 3, "output": str(output)}
    dag_run = run_dag(DAG_ID, conf)
    assert dag_run.state == "failed"  # every image needs the init file: nothing to publish
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    refused_at_prepare = states["prepare"] == "failed"  # the init file checked once, or per image at ingest
    captured = assert_secret_nowhere_in_the_run(dag_run, secret, capfd, caplog, output,
                                                xcoms_expected=not refused_at_prepare)
    shown_text = captured.out + captured.err + caplog.text
    assert "user=admin" not in shown_text
    assert "creds.txt: line 1: expected 4 columns of numbers (label B G R)" in shown_text  # the reason is given
    assert not [n for n in (os.listdir(output) if output.exists() else []) if not n.startswith(".")]
