"""The command line never loses anything: inputs are never replaced, foreign files in the output
folder are kept, signals and kill -9 leave no work folder behind, a full disk is one line (exit 3),
and conflicting parameters are refused once (exit 2). Real photos, real processes, real tmpfs."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli

PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------ helpers
def digests(folder) -> dict:
    """File name -> SHA-256 of every entry of a folder (folders and symlinks by their kind)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        out[name] = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) else "dir"
    return out


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture()
def photos(tmp_path, photo_dir):
    """A private copy of the real photos (the shared fixture folder is never written)."""
    folder = tmp_path / "in"
    shutil.copytree(photo_dir, folder)
    return folder


@pytest.fixture()
def many_photos(tmp_path, photo_dir):
    """24 real photos (the six, four times): a run that lasts long enough to be stopped mid-way."""
    folder = tmp_path / "many"
    folder.mkdir()
    for copy in range(4):
        for name in os.listdir(photo_dir):
            shutil.copyfile(photo_dir / name, folder / f"{copy}-{name}")
    return folder


def start_cli(*argv, tmpdir):
    """``python -m kmeans_ops`` as its own process, temporary folder ``tmpdir``. SIGINT starts at its
    default action, as in a terminal (a shell running the tests in the background ignores it)."""
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "kmeans_ops", *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def work_folders(tmpdir) -> list[str]:
    return sorted(n for n in os.listdir(tmpdir) if n.startswith("kmeans-work-"))


def wait_for_work(tmpdir, proc, known=(), timeout=120.0) -> str:
    """The work folder a running CLI made in ``tmpdir``, once it holds an ingested image (mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in work_folders(tmpdir):
            images = os.path.join(tmpdir, name, "images")
            if name not in known and os.path.isdir(images) and os.listdir(images):
                return os.path.join(tmpdir, name)
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError("no work folder appeared")


@pytest.fixture()
def tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted for the test (we are root in this container), or a skip saying why."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder, leave_pages=0):
    """Fill the filesystem of ``folder`` with a file 'filler', then give back ``leave_pages`` pages."""
    filler = os.path.join(folder, "filler")
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * PAGE)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    os.truncate(filler, max(0, os.path.getsize(filler) - leave_pages * PAGE))
    return filler


# ---------------------------------------------------------------------- never replace an input
def test_output_folder_equal_to_the_input_folder_is_refused(photos):
    before = digests(photos)
    status, err = run_cli("quantize", photos, "-k", 2, "--out", photos, "-q")
    assert status == 2, err
    [line] = error_lines(err)
    assert line.startswith("error: ") and str(photos) in line and "would replace this input" in line
    assert digests(photos) == before  # byte-identical, and nothing added


def test_output_folder_through_a_symlink_to_the_input_folder_is_refused(photos, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(photos, target_is_directory=True)
    before = digests(photos)
    status, err = run_cli("quantize", photos / "china.jpg", photos / "rocket.png", "-k", 2, "--out", link, "-q")
    assert status == 2, err
    [line] = error_lines(err)
    assert "rocket.png" in line and str(link) in line  # the input and the output folder
    assert digests(photos) == before


def test_a_foreign_file_keeps_its_name_and_a_rerun_replaces_only_its_own_output(photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    foreign = (photos / "rocket.png").read_bytes()
    (out / "china.png").write_bytes(foreign)  # someone else's china.png, no JSON of ours
    status, err = run_cli("quantize", photos / "china.jpg", photos / "coffee.png", "-k", 4, "--out", out, "-q")
    assert status == 0, err
    assert (out / "china.png").read_bytes() == foreign
    assert sorted(os.listdir(out)) == ["china-2.json", "china-2.png", "china.png", "coffee.json", "coffee.png"]
    figures = json.loads((out / "china-2.json").read_text())
    assert figures["source"] == str(photos / "china.jpg") and figures["k"] == 4
    first = digests(out)

    status, err = run_cli("quantize", photos / "china.jpg", photos / "coffee.png", "-k", 4, "--out", out, "-q")
    assert status == 0, err
    assert digests(out) == first  # the same files, replaced by themselves: no china-3, no coffee-2

    status, err = run_cli("quantize", photos / "coffee.png", "-k", 3, "--out", out, "-q")
    assert status == 0, err
    assert sorted(os.listdir(out)) == sorted(first) and json.loads((out / "coffee.json").read_text())["k"] == 3


# ---------------------------------------------------------------------------- signals, kill -9
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_removes_the_work_folder(many_photos, tmp_path, signum):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    proc = start_cli("quantize", many_photos, "-k", 16, "--out", out, "-q", tmpdir=tmpdir)
    work = wait_for_work(tmpdir, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert error_lines(err)[-1].startswith("interrupted: " + signal.Signals(signum).name), err
    assert "Traceback" not in err
    assert not os.path.exists(work) and os.listdir(tmpdir) == []
    written = os.listdir(out) if out.exists() else []
    assert not [n for n in written if ".tmp-" in n]  # nothing half-written
    assert {n[:-4] for n in written if n.endswith(".png")} <= {n[:-5] for n in written if n.endswith(".json")}


def test_the_next_run_removes_only_the_folders_of_killed_runs(many_photos, photos, tmp_path):
    from kmeans_ops import cli
    from kmeans_ops.storage import write_json

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    live = start_cli("quantize", many_photos, "-k", 16, "--out", tmp_path / "out-live", "-q", tmpdir=tmpdir)
    live_work = wait_for_work(tmpdir, live)
    live.send_signal(signal.SIGSTOP)  # alive, but standing still while the other runs sweep
    try:
        killed = start_cli("quantize", many_photos, "-k", 16, "--out", tmp_path / "out-killed", "-q", tmpdir=tmpdir)
        killed_work = wait_for_work(tmpdir, killed, known=[os.path.basename(live_work)])
        killed.kill()  # SIGKILL: no handler runs, the folder stays
        killed.wait()
        assert os.path.isdir(killed_work) and os.path.isdir(live_work)

        foreign = tmpdir / "kmeans-work-foreign"  # our prefix, not our marker
        foreign.mkdir()
        (foreign / "notes.txt").write_text("not ours\n")
        reused = tmpdir / "kmeans-work-reused"  # the marker of a pid now used by another process
        reused.mkdir()
        record = cli.owner_record(str(reused))
        write_json(str(reused / cli.MARKER), dict(record, start=record["start"] - 1))
        given = tmpdir / "kmeans-work-given"  # the user's --work folder

        nxt = start_cli("quantize", photos / "chelsea.png", "-k", 4, "--out", tmp_path / "out-next",
                           "--work", given, tmpdir=tmpdir)
        _, err = nxt.communicate(timeout=120)
        assert nxt.returncode == 0, err
        assert f"removed {killed_work}" in err and f"removed {reused}" in err
        assert not os.path.exists(killed_work) and not reused.exists()
        assert (foreign / "notes.txt").read_text() == "not ours\n"
        assert os.path.isdir(live_work) and os.path.isfile(os.path.join(live_work, cli.MARKER))
        assert (given / "images").is_dir()  # --work is the user's: kept
    finally:
        live.send_signal(signal.SIGTERM)  # delivered when it continues
        live.send_signal(signal.SIGCONT)
        _, err = live.communicate(timeout=120)
    assert live.returncode == 128 + signal.SIGTERM, err
    assert not os.path.exists(live_work)


# ---------------------------------------------------------------------------------- full disks
def test_a_full_work_area_given_as_work_is_one_line_and_exit_3(photos, tmp_path, tmpfs):
    out = tmp_path / "out"
    status, err = run_cli("quantize", photos, "-k", 4, "--out", out, "--work", tmpfs / "work", "-q")
    assert status == 3, err
    assert error_lines(err) == [f"error: no space left on device in {tmpfs / 'work'} "
                                f"(work area; set TMPDIR or --work to a folder with room)"]
    assert os.listdir(out) == []


def test_a_full_temporary_folder_is_one_line_and_exit_3(photos, tmp_path, tmpfs):
    out = tmp_path / "out"
    proc = start_cli("quantize", photos, "-k", 4, "--out", out, "-q", tmpdir=tmpfs)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert error_lines(err) == [f"error: no space left on device in {tmpfs} "
                                f"(work area; set TMPDIR or --work to a folder with room)"]
    assert os.listdir(tmpfs) == [] and os.listdir(out) == []  # the work folder removed, nothing written


def test_a_full_output_folder_is_one_line_and_exit_3(photos, tmpfs):
    filler = fill(tmpfs)
    status, err = run_cli("quantize", photos / "astronaut.png", photos / "chelsea.png", "-k", 4, "--out", tmpfs, "-q")
    assert status == 3, err
    assert error_lines(err) == [f"error: no space left on device in {tmpfs} "
                                f"(output folder; free some space or choose another --out)"]
    assert os.listdir(tmpfs) == [os.path.basename(filler)]


def test_an_image_whose_figures_cannot_be_written_is_not_left_alone(photos, tmp_path, tmpfs):
    """Room for the PNG but not for its JSON: the PNG is removed too (a re-run would take it for a
    foreign file); with one more page both are written."""
    status, err = run_cli("quantize", photos / "astronaut.png", "-k", 4, "--out", tmp_path / "probe", "-q")
    assert status == 0, err
    pages = -(-os.path.getsize(tmp_path / "probe" / "astronaut.png") // PAGE)
    filler = fill(tmpfs, leave_pages=pages)
    status, err = run_cli("quantize", photos / "astronaut.png", "-k", 4, "--out", tmpfs, "-q")
    assert status == 3 and "output folder" in err, err
    assert os.listdir(tmpfs) == ["filler"]
    os.truncate(filler, os.path.getsize(filler) - PAGE)
    status, err = run_cli("quantize", photos / "astronaut.png", "-k", 4, "--out", tmpfs, "-q")
    assert status == 0, err
    assert sorted(os.listdir(tmpfs)) == ["astronaut.json", "astronaut.png", "filler"]


# --------------------------------------------------------------------------- parameter conflicts
def test_init_file_and_k_that_disagree_are_refused_once(photos, tmp_path):
    init = tmp_path / "four.txt"
    init.write_text("1 10 20 30\n2 200 100 50\n3 0 0 0\n4 255 255 255\n")
    out = tmp_path / "out"
    status, err = run_cli("quantize", photos, "-k", 8, "--init", init, "--out", out)
    assert status == 2, err
    [line] = error_lines(err)
    assert "init" in line and "k is 8" in line and "4 centroids" in line and str(init) in line
    assert not out.exists()  # nothing processed, not even the output folder made

    status, err = run_cli("quantize", photos / "coffee.png", "--init", init, "--out", out, "-q")
    assert status == 0, err  # without -k, the file's K
    assert json.loads((out / "coffee.json").read_text())["k"] == 4


def test_a_bad_init_file_is_a_parameter_error_naming_the_line_not_the_content(photos, tmp_path):
    init = tmp_path / "creds.txt"
    init.write_text("1 10 20 30\n2 200 100 50\npassword=hunter2-secret\n")
    out = tmp_path / "out"
    status, err = run_cli("quantize", photos, "-k", 3, "--init", init, "--out", out)
    assert status == 2, err
    [line] = error_lines(err)
    assert "init" in line and str(init) in line and "line 3" in line
    assert "hunter2" not in err and "password" not in err
    assert not out.exists()


# ------------------------------------------------------------------------- one line per message
def test_names_holding_a_newline_give_one_line_each(photos, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    shutil.copyfile(photos / "chelsea.png", folder / "two\nlines.png")
    (folder / "bad\nname.png").write_text("not an image\n")
    status, err = run_cli("quantize", folder, "-k", 3, "--out", tmp_path / "out")
    assert status == 1, err
    lines = error_lines(err)
    read = [line for line in lines if line.startswith("read ")]
    wrote = [line for line in lines if line.startswith("wrote ")]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(read) == len(wrote) == len(errors) == 1, err
    assert "two\\nlines.png" in read[0] and "two\\nlines.png" in wrote[0] and "bad\\nname.png" in errors[0]
    assert all(line.startswith(("read ", "wrote ", "error: ", "iteration ", "1 of 2")) for line in lines), err
    assert sorted(os.listdir(tmp_path / "out")) == ["two\nlines.json", "two\nlines.png"]


def test_the_dag_path_refuses_the_same_conflict(tmp_path):
    """params.validate, which the DAG's prepare calls too, refuses it (the DAG always passes a k)."""
    from kmeans_ops import params as P

    init = tmp_path / "four.txt"
    init.write_text("1 10 20 30\n2 200 100 50\n3 0 0 0\n4 255 255 255\n")
    with pytest.raises(P.ParamError, match=r"^init and k disagree: .* holds 4 centroids but k is 16"):
        P.validate(k=16, init=str(init))
    assert P.validate(k=4, init=str(init)).k == 4 and P.validate(k=None, init=str(init)).k == 4


# ------------------------------------------------------------------------------------ warnings
def test_ingest_warnings_are_printed_one_line_each(photos, tmp_path):
    """A 3-page TIFF of real photos: the first page is used, and the CLI says so."""
    import cv2

    from conftest import photo_bgr

    pages = [photo_bgr(name)[:200, :200] for name in ("coffee", "rocket", "chelsea")]
    tiff = tmp_path / "pages.tiff"
    assert cv2.imwritemulti(str(tiff), pages)
    status, err = run_cli("quantize", tiff, "-k", 4, "--out", tmp_path / "out", "-q")
    assert status == 0, err
    assert [line for line in error_lines(err) if line.startswith("warning: ")] == \
        [f"warning: {tiff}: first frame of 3 used"]
    assert json.loads((tmp_path / "out" / "pages.json").read_text())["warnings"] == ["first frame of 3 used"]
