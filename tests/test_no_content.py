"""No file content in any message: a bad points, clusters or init file is named with its line
number and what was expected, never quoted (CLI, logs, XCom, summary.json, report.html, outputs).
File names with control characters stay on one line."""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid

import cv2
import numpy as np
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


def test_bad_line_far_down_a_big_file_is_found(tmp_path, secret):
    """The line number of a bad line far down a big file (found from NumPy blocks, not a Python
    loop over the whole file; its speed is not asserted here: tests assert no timings)."""
    path = tmp_path / "points.txt"
    good = b"10.0 20.0 30.0\n" * 300_000
    path.write_bytes(good + b"1 2 3\n" + secret.encode() + b"\n")
    with pytest.raises(InputError) as err:
        formats.read_seed_points(str(path))
    assert str(err.value) == f"{path}: line 300002: expected 3 columns of numbers (B G R)"


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


# ------------------------------------------------------------------ ingest: OpenCV's text is not passed on
def test_opencv_decoder_error_is_not_quoted(tmp_path, secret):
    """A file OpenCV's decoder raises on (an OpenEXR header: the codec is disabled in the wheel) gives
    the fixed message, not OpenCV's text (its decoders' messages may quote what they read)."""
    from kmeans_ops.ingest import read_image

    path = tmp_path / "scan\nned.exr"
    path.write_bytes(b"\x76\x2f\x31\x01\x02\x00\x00\x00" + (secret + "\n").encode() * 4)
    with pytest.raises(InputError) as err:
        read_image(str(path))
    message = str(err.value)
    assert message == (f"{shown(str(path))}: not an image OpenCV can decode (its decoder refused the file; "
                       "expected JPEG, PNG, BMP, TIFF, WebP or another format OpenCV reads)")
    assert "OpenCV(" not in message and "grfmt" not in message and len(message.splitlines()) == 1
    assert_not_in_text(message, secret, "the message")


# ------------------------------------------------------------------ the nightly ledger
def ledger_cases(secret: str):
    """(case, ledger file bytes, the expected problem) of each ledger that cannot be used."""
    key = "0" * 64
    entry = {"path": "/landing/a.png", "size": 1, "first_seen": "2025-01-01T00:00:00+00:00", "run_id": "r"}
    return [
        ("version", json.dumps({"version": secret, "files": {}}).encode(), "unsupported version (expected one of 1, 2)"),
        ("short key", json.dumps({"version": 1, "files": {key: entry, secret: entry}}).encode(),
         "is corrupt (entry 2 is not a 64-hex digest with an object)"),
        ("64 characters, not hex", json.dumps({"version": 1, "files": {secret.ljust(64, "z")[:64]: entry}}).encode(),
         "is corrupt (entry 1 is not a 64-hex digest with an object)"),
        ("entry not an object", json.dumps({"version": 1, "files": {key: secret}}).encode(),
         "is corrupt (entry 1 is not a 64-hex digest with an object)"),
        ("not UTF-8", b'{"version": 1, "files": {"\xff\xfe' + secret.encode() + b'": {}}}',
         "cannot read it (not UTF-8; expected a JSON file)"),
        ("not JSON", b'{"version": 1,\n "files": {"' + secret.encode() + b'" ', "is corrupt (not JSON at line 2 column "),
    ]


@pytest.mark.parametrize("case", [c[0] for c in ledger_cases("x-y")])
def test_ledger_errors_name_the_file_not_its_content(tmp_path, secret, case):
    from kmeans_ops import ledger as L

    _, content, why = next(c for c in ledger_cases(secret) if c[0] == case)
    path = tmp_path / "led\nger.json"  # the name is shown on one line too
    path.write_bytes(content)
    with pytest.raises(L.LedgerError) as err:
        L.Ledger.load(str(path))
    message = str(err.value)
    assert message.startswith(f"ledger {shown(str(path))}") and why in message, message
    assert len(message.splitlines()) == 1
    assert_not_in_text(message, secret, "the message")
    assert "\\xff" not in message and "0xff" not in message  # no byte quoted either
    assert path.read_bytes() == content  # the ledger is left as it was


def test_nightly_with_a_ledger_holding_a_secret_fails_without_quoting_it(airflow_db, tmp_path, secret, capfd,
                                                                         caplog, monkeypatch):
    import logging

    caplog.set_level(logging.DEBUG)
    landing = tmp_path / "landing"
    landing.mkdir()
    ledger = tmp_path / "ledger.json"
    content = json.dumps({"version": secret, "files": {}})
    ledger.write_text(content)
    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_LANDING_ROOTS", json.dumps([str(landing)]))
    monkeypatch.setenv("AIRFLOW_VAR_KMEANS_LEDGER_PATH", str(ledger))
    monkeypatch.delenv("AIRFLOW_VAR_KMEANS_NIGHTLY_DEFAULTS", raising=False)
    dag_run = run_dag("kmeans_nightly", {})
    assert dag_run.state == "failed"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states["scan"] == "failed"
    captured = assert_secret_nowhere_in_the_run(dag_run, secret, capfd, caplog, tmp_path / "no-output",
                                                xcoms_expected=False)
    assert f"ledger {ledger}: unsupported version (expected one of 1, 2)" in captured.out + captured.err + caplog.text
    assert ledger.read_text() == content


def test_nightly_unknown_default_key_is_named_on_one_line():
    """A key of the defaults Variable is named (README: "other keys fail the run, named"), on one line."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("kmeans_nightly_dag", os.path.join(ROOT, "dags", "kmeans_nightly.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError) as err:
        module.check_defaults({"k": 4, "colours\nk": 8})
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "unknown key(s) colours\\nk; allowed: k, " in message


# ------------------------------------------------------------------ job files of the Hadoop engine
# What a failed task prints on stderr is copied into the engine's error (the CLI's, the DAG's failure
# message): the streaming adapters name the line and the expected format, never the line.
def centroids_file(folder, extra: bytes = b"") -> str:
    """A job's centroids file for one image ``img`` with K=2, as the engine writes it, then ``extra``."""
    from kmeans_ops import streaming

    text = streaming.format_centroids({"img": np.array([[1.0, 2.0, 3.0], [200.0, 100.0, 50.0]])},
                                      {"img": [100.0, 50.0, 25.0]})  # a list, as the engine passes it
    path = os.path.join(folder, "centroids.tsv")
    with open(path, "wb") as handle:
        handle.write(text.encode() + extra)
    return path


@pytest.mark.parametrize("extra,why", [
    (b"img\tC 2 {s} 1 2\n", "expected '<image id>\\tM <mean B> <mean G> <mean R> [<pinned>]' or "
                             "'<image id>\\tC <cluster> <B> <G> <R>'"),
    (b"{s}\n", "expected '<image id>\\tM"),
    (b"img\tX {s}\n", "expected '<image id>\\tM"),
    (b"img\tC 2 1 2 3 {s}\n", "expected '<image id>\\tM"),
    (b"\xff\xfe{s}\n", "not UTF-8 (expected text)"),
], ids=["text for a number", "no tab", "unknown kind", "5 fields", "not UTF-8"])
def test_centroids_file_errors_name_the_line_not_the_content(tmp_path, secret, extra, why):
    """A job's centroids file (shipped to every task) with a bad line 4 after the engine's three."""
    from kmeans_ops import streaming

    path = centroids_file(str(tmp_path), extra.replace(b"{s}", secret.encode()))
    with pytest.raises(ValueError) as err:
        streaming.read_centroids(path)
    message = str(err.value)
    assert message.startswith(f"{path}: line 4: ") and why in message, message
    assert_not_in_text(message, secret, "the message")
    assert "\\xff" not in message and "0xff" not in message


def test_centroids_file_with_a_missing_cluster(tmp_path):
    from kmeans_ops import streaming

    path = centroids_file(str(tmp_path), b"other\tM 1.0 2.0 3.0\nother\tC 1 4.0 5.0 6.0\n")  # no cluster 0
    with pytest.raises(ValueError, match=r"centroids.tsv: expected one C line for each cluster 0..K-1"):
        streaming.read_centroids(path)
    good = streaming.read_centroids(centroids_file(str(tmp_path)))  # the file as the engine writes it
    assert good[0]["img"].tolist() == [[1.0, 2.0, 3.0], [200.0, 100.0, 50.0]]


def map_output(table_rows=((1, 2, 3, 4), (200, 100, 50, 2))) -> str:
    """The map output records of image ``img`` (K=2) for colour rows (B, G, R, count), as a real mapper writes them."""
    from kmeans_ops import mapreduce

    rows = np.array(table_rows, dtype=np.float64)
    codes = (rows[:, 2].astype(np.int64) << 16) | (rows[:, 1].astype(np.int64) << 8) | rows[:, 0].astype(np.int64)
    part = mapreduce.map_colours(rows[:, :3], rows[:, 3], codes, np.array([[1.0, 2.0, 3.0], [200.0, 100.0, 50.0]]),
                                 np.array([100.0, 50.0, 25.0]))
    return mapreduce.encode("img", part)


@pytest.mark.parametrize("role", ["combine", "reduce"])
@pytest.mark.parametrize("bad", ["img\tP 0 {s} 1 1 1 1", "img\tF 1.0 2 3.0", "img\t{s}", "img\tP 7 1 1 1 1 1"],
                         ids=["text for a number", "3 fields", "unknown kind", "cluster 7 of 2"])
def test_streaming_task_stderr_names_the_line_not_the_record(tmp_path, secret, role, bad):
    """The combiner and reducer, run as Hadoop Streaming runs them (a process reading stdin), fail
    on a malformed record with its line number in their input and the expected format."""
    import subprocess
    import sys

    from conftest import ROOT

    good = map_output().splitlines()
    lines = good[:2] + [""] + [bad.replace("{s}", secret)] + good[2:]  # the blank line is line 3
    args = [centroids_file(str(tmp_path))] + (["1.0"] if role == "reduce" else [])
    done = subprocess.run([sys.executable, "-m", "kmeans_ops.streaming", role, *args], cwd=ROOT,
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("ValueError: map output line 4: expected '<image id>\\tP <cluster> <sum B> <sum G> <sum R> "
                    "<weight> <sse>' or '<image id>\\tF <dist> <code> <weight> <label>'"), done.stderr
    assert_not_in_text(done.stderr, secret, "the task's stderr")


def test_streaming_record_of_an_image_the_job_does_not_hold(tmp_path, secret):
    from kmeans_ops import streaming

    text = map_output().replace("img\t", f"{secret}\t")
    with pytest.raises(ValueError) as err:
        streaming.run_combine(centroids_file(str(tmp_path)), io.StringIO(text), io.StringIO())
    assert str(err.value) == "map output line 1: an image id the job's centroids file does not hold"


def test_good_records_still_combine_and_reduce(tmp_path):
    from kmeans_ops import streaming

    path = centroids_file(str(tmp_path))
    combined, reduced = io.StringIO(), io.StringIO()
    streaming.run_combine(path, io.StringIO(map_output() + "\n" + map_output()), combined)
    streaming.run_reduce(path, 1.0, io.StringIO(combined.getvalue()), reduced)
    [(centroids, figures)] = streaming.parse_reduce_output(reduced.getvalue().splitlines(), "part-00000").values()
    assert centroids.tolist() == [[1.0, 2.0, 3.0], [200.0, 100.0, 50.0]] and figures["converged"] is True


REDUCER_LINE = "expected '<image id>\\tC <cluster> <B> <G> <R>' or '<image id>\\tS <figures as a JSON object>'"


@pytest.mark.parametrize("bad,why", [
    ("img\tC 1 2.0 {s} 4.0", REDUCER_LINE),
    ("img\tS {{\"x\": \"{s}\"", REDUCER_LINE),
    ("img\tS \"{s}\"", REDUCER_LINE),
    ("img\tQ {s}", REDUCER_LINE),
    ("{s}", REDUCER_LINE),
], ids=["text for a number", "figures not JSON", "figures not an object", "unknown kind", "no tab"])
def test_reducer_output_errors_name_the_part_file_and_line(secret, bad, why):
    from kmeans_ops import streaming

    source = "/user/bob/kmeans-work/jobs/iteration-002-abc/part-00000"
    lines = ["img\tC 0 1.0 2.0 3.0", bad.replace("{s}", secret), 'img\tS {"converged": true}']
    with pytest.raises(ValueError) as err:
        streaming.parse_reduce_output(lines, source)
    assert str(err.value) == f"{source}: line 2: {why}"
    assert_not_in_text(str(err.value), secret, "the message")


def test_reducer_output_with_a_missing_cluster_names_the_part_file():
    from kmeans_ops import streaming

    with pytest.raises(ValueError, match=r"^part-00001: expected one C line for each cluster 0..K-1"):
        streaming.parse_reduce_output(["img\tC 1 1.0 2.0 3.0", 'img\tS {"converged": true}'], "part-00001")


def test_reducer_output_not_utf8_names_the_part_file_not_the_bytes(secret):
    """What the Hadoop engine reads back from HDFS (iterate): bytes that are not UTF-8 give the part
    file and the line (the engine raises it as HadoopJobError), never the bytes."""
    from kmeans_ops import streaming

    source = "/user/bob/kmeans-work/jobs/iteration-002-abc/part-00000"
    data = b"img\tC 0 1.0 2.0 3.0\nimg\tC 1 \xff\xfe" + secret.encode() + b"\n"
    with pytest.raises(ValueError) as err:
        streaming.utf8_lines(data, source)
    assert str(err.value) == f"{source}: line 2: not UTF-8 (expected text)"
    assert streaming.utf8_lines(b"a\nb\n", source) == ["a", "b"] and streaming.utf8_lines(b"", source) == []


# ------------------------------------------------------------------ HDFS errors: no query strings (tokens)
@pytest.fixture
def webhdfs_redirecting_to_a_dead_datanode(monkeypatch):
    """A WebHDFS NameNode on 127.0.0.1 that answers the client's check of ``/`` and redirects every
    other operation to a DataNode address that refuses connections, with the query a secured
    NameNode puts in its redirects (``user.name=``, ``delegation=<token>``). Returns (connection id,
    token). The WebHDFS client, requests and urllib3 are the real ones; only the server is small."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    token = f"SECRETTOKEN{uuid.uuid4().hex}"
    dead = socket.socket()  # bound, never listening: connections to it are refused
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]

    class NameNode(BaseHTTPRequestHandler):
        def _answer(self):
            if self.path.split("?")[0] in ("/webhdfs/v1", "/webhdfs/v1/") and "op=GETFILESTATUS" in self.path:
                body = json.dumps({"FileStatus": {"type": "DIRECTORY", "length": 0, "pathSuffix": "",
                                                  "permission": "755", "owner": "bob", "group": "bob",
                                                  "modificationTime": 0, "accessTime": 0, "blockSize": 0,
                                                  "replication": 0}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            path, _, query = self.path.partition("?")
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{dead_port}{path}?{query}&namenoderpcaddress=nn:8020"
                                         f"&delegation={token}&offset=0")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NameNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    connection = json.dumps({"conn_type": "webhdfs", "host": "127.0.0.1", "port": server.server_address[1],
                             "login": "bob"})
    monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_TOKENS", connection)
    monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_DEFAULT", connection)
    try:
        yield "webhdfs_tokens", token
    finally:
        server.shutdown()
        server.server_close()
        dead.close()


def test_hdfs_error_has_no_query_string(webhdfs_redirecting_to_a_dead_datanode, caplog):
    import logging

    from kmeans_ops.hdfs import Hdfs, HdfsError

    conn_id, token = webhdfs_redirecting_to_a_dead_datanode
    caplog.set_level(logging.DEBUG, logger="kmeans_ops.hdfs")
    client = Hdfs(conn_id=conn_id, retries=1, backoff=0.01)
    with pytest.raises(HdfsError) as err:
        client.read_bytes("/data/new\nline.tsv")
    message = str(err.value)
    assert message.startswith("HDFS read /data/new\\nline.tsv on http://127.0.0.1:"), message
    assert "/webhdfs/v1/data/new" in message and "Connection refused" in message  # what failed, where
    assert len(message.splitlines()) == 1
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retried) == 1  # the transient error was retried once, and logged
    for text in [message, *retried]:
        assert token not in text and "delegation=" not in text and "user.name=" not in text, text


def test_cli_hdfs_failure_is_one_line_without_tokens(webhdfs_redirecting_to_a_dead_datanode, good_image, tmp_path,
                                                     monkeypatch, capfd):
    _, token = webhdfs_redirecting_to_a_dead_datanode
    monkeypatch.setenv("KMEANS_HDFS_RETRIES", "0")
    monkeypatch.delenv("KMEANS_HDFS_WORK_ROOT", raising=False)
    out = tmp_path / "out"
    status, err = run_cli("quantize", good_image, "-k", 3, "--engine", "hadoop", "--out", out, "-q")
    captured = capfd.readouterr()
    assert status == 3, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hadoop engine: HDFS "), err
    assert "/user/bob/kmeans-work" in lines[0] and "failed: " in lines[0] and "Connection refused" in lines[0]
    for text in (err, captured.out, captured.err):
        assert token not in text and "delegation=" not in text and "user.name=" not in text
    assert not out.exists() or not os.listdir(out)  # nothing written


# ------------------------------------------------------------------ CLI: an engine failure with a task log
def test_engine_error_is_one_error_line_then_the_task_log():
    """A failed Hadoop job's error carries its failing task's stderr tail (engines/hadoop.py): the CLI
    prints one ``error:`` line, then the tail on lines starting with "  | ", each one printable line."""
    from kmeans_ops.cli import engine_error_lines
    from kmeans_ops.engines.hadoop import HadoopJobError

    err = HadoopJobError(
        "iteration 2: Hadoop Streaming job failed (exit 1); application application_1_0002, tracking URL "
        "http://127.0.0.1:8088/proxy/application_1_0002/\n"
        "--- attempt_1_0002_m_000000_1 on 127.0.0.1:8042 (container_1_0002_01_000003), stderr tail:\n"
        "Traceback (most recent call last):\r\n"
        "  File \"kmeans_ops/streaming.py\", line 60, in read_centroids\n"
        "\x1b[31mValueError: centroids.tsv: line 4: expected '<image id>\\tM ...'\x1b[0m\r\n\n"
    )
    lines = engine_error_lines("hadoop", err)
    assert lines[0] == ("error: hadoop engine: iteration 2: Hadoop Streaming job failed (exit 1); application "
                        "application_1_0002, tracking URL http://127.0.0.1:8088/proxy/application_1_0002/")
    assert lines[1:] == [
        "  | --- attempt_1_0002_m_000000_1 on 127.0.0.1:8042 (container_1_0002_01_000003), stderr tail:",
        "  | Traceback (most recent call last):",
        "  |   File \"kmeans_ops/streaming.py\", line 60, in read_centroids",
        "  | \\x1b[31mValueError: centroids.tsv: line 4: expected '<image id>\\tM ...'\\x1b[0m",
    ]
    printed = "\n".join(lines)
    assert [line for line in printed.splitlines() if line.startswith("error:")] == [lines[0]]
    assert all(line.isprintable() for line in lines)
    assert engine_error_lines("hadoop", HadoopJobError("HDFS read /a\\nb failed")) == [
        "error: hadoop engine: HDFS read /a\\nb failed"]
