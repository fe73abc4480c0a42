"""Command line: ``python -m kmeans_ops quantize INPUT... -k K --out DIR``.

Exit status: 0 when every image was done; 1 when some failed (each named on stderr); 2 for a usage
or parameter error, or outputs that would replace an input (nothing is processed); 3 when the
engine failed (HDFS or a Hadoop job; nothing is written) or a disk is full (work area or output
folder); 128 + N when ended by signal N (130 for Ctrl+C, 143 for SIGTERM), the work folder removed.

Safety rules (see README, "Command line"):

- **No input is ever replaced.** When an output ``<out>/<stem>.png`` or ``.json`` is an input file
  (same file after resolving symlinks), the run is refused before anything is processed.
- **No foreign file is overwritten.** An output name already taken in the output folder by
  something that is not this input's own earlier output (its ``<stem>.json`` names this input as
  ``source``) makes the input take the next free name, ``<stem>-2``, ``<stem>-3``, ...; an earlier
  output of the same input is replaced, so running a command again gives the same files.
- **Clean ends.** The temporary work folder (``kmeans-work-*`` in TMPDIR, marked with its owner's
  pid and start time) is removed at the end, on SIGTERM and on SIGINT; a later run removes the
  folders of runs that were killed outright (their owner is gone), and only those.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager

from . import params as P
from .errors import InputError, shown
from .settings import KEEP_BYTES, MAX_BATCH_SIZE
from .storage import StorageFull, is_full

DESCRIPTION = """K-means colour quantisation: redraw each image with its K cluster colours.

For each input image <stem>, writes DIR/<stem>.png (the image in K colours, alpha kept) and
DIR/<stem>.json (k, iterations, converged, centroids_rgb, mse, psnr, history, ...); with --labels
also DIR/<stem>-labels.png (each pixel's cluster index). An input is
never replaced (refused, exit 2); a name already used in DIR by another file gives <stem>-2, ...;
this input's own earlier outputs are replaced.

Exit status: 0 all done, 1 some images failed, 2 bad parameter or unusable output folder,
3 engine failure or no space left, 130/143 interrupted (Ctrl+C/SIGTERM)."""

#: Prefix of the temporary work folders; each holds MARKER naming the run that owns it.
WORK_PREFIX = "kmeans-work-"
MARKER = ".kmeans-work-owner.json"
#: A marker is a few hundred bytes: a bigger file under that name is not ours.
_MARKER_MAX_BYTES = 4096
#: Largest ``<stem>.json`` read to see whether it is this input's own earlier output.
_OWN_JSON_MAX_BYTES = 64 << 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kmeans_ops", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="cluster the colours of images", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (JPEG, PNG, BMP, TIFF, WebP) or folders of them (not recursive); "
                        "a seed points.txt (any .txt) gives centroids and figures but no image")
    q.add_argument("-k", type=str, default=None,
                   help=f"number of colours (clusters), an integer >= 1 (default {P.DEFAULT_K}, or the "
                        "number of centroids in the --palette or --init file, which must agree with -k when "
                        "both are given); an image (or, with --palette run, a set of images) with fewer "
                        "distinct colours keeps all of them; 'auto': per image the fewest colours whose "
                        "PSNR reaches --quality")
    q.add_argument("--quality", default=None, metavar="MIN-MAX",
                   help="with -k auto: PSNR in dB, e.g. 28-32: each image gets the fewest colours in 2..--max-k "
                        "reaching MAX (--max-k colours if none does but they reach MIN); an image that cannot "
                        "reach MIN fails with one line and nothing is written for it")
    q.add_argument("--max-k", default=P.DEFAULT_MAX_K_AUTO, metavar="N",
                   help=f"with -k auto: the most colours tried, 2 to {P.MAX_K} (default {P.DEFAULT_MAX_K_AUTO})")
    q.add_argument("--keep", default=None, metavar="FILE|#rrggbb,...",
                   help="pinned colours, in every output palette and never moved by K-means (the other "
                        "colours are clustered around them): #rrggbb values separated by commas, or a "
                        "clusters file in the seed format ('label B G R' per line, whole values 0-255); "
                        "fewer than K; with --palette image or run")
    q.add_argument("--skip-if-larger", action="store_true",
                   help="write no output image for an input whose quantised PNG would be larger than the "
                        "input file: its JSON says \"skipped\": \"larger\" (the input is the better file)")
    q.add_argument("--init", default="kmeans++",
                   help="initial centroids: 'kmeans++' (default, weighted by colour counts), 'random' "
                        "(uniform between the image's smallest and largest value, as the seed did) or "
                        "the path of a clusters file in the seed format ('label B G R' per line)")
    q.add_argument("--palette", default="image", metavar="image|run|PATH",
                   help="'image' (default): each image gets its own K colours; 'run': one palette of K colours "
                        "for all the images of the run, clustered together over all their pixels (a colour "
                        "means the same in every image; one MapReduce job per iteration for the whole run); "
                        "or the path of a clusters file in the seed format ('label B G R' per line): a fixed "
                        "palette applied to every image with no iterations (its K must equal -k)")
    q.add_argument("--seed", default=0, help="seed of every random choice, for reproducible runs (default 0)")
    q.add_argument("--max-iter", default=P.DEFAULT_MAX_ITER,
                   help=f"most iterations (MapReduce jobs) per image (default {P.DEFAULT_MAX_ITER})")
    q.add_argument("--delta", default=P.DEFAULT_DELTA,
                   help=f"converged when no centroid moved more than this, in colour units, 0 to {P.MAX_DELTA:g}; "
                        f"0 runs until no centroid moves (default {P.DEFAULT_DELTA})")
    q.add_argument("--labels", action="store_true",
                   help="also write DIR/<stem>-labels.png: one channel, the cluster index of each pixel (8-bit "
                        "for K <= 256, else 16-bit), so that palette_rgb[label] in the JSON is the output's colour")
    q.add_argument("--dither", default="none", metavar="none|floyd-steinberg",
                   help="'none' (default): each pixel takes its cluster's colour; 'floyd-steinberg': error "
                        "diffusion with the same K colours, so gradients do not band (K <= 256; MSE and PSNR "
                        "are those of the dithered output)")
    q.add_argument("--engine", default="local", choices=["local", "hadoop"],
                   help="'local' (default): in-process MapReduce on the local filesystem; "
                        "'hadoop': Hadoop Streaming jobs on YARN with data in HDFS")
    q.add_argument("--batch-size", default=64, help="images per MapReduce job (default 64)")
    q.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created if missing); it may not be where an input would be replaced")
    q.add_argument("--work", metavar="DIR", default=None,
                   help="keep the work area (points, clusters, per-iteration figures) in DIR "
                        "(default: a temporary folder in TMPDIR, removed at the end, also on Ctrl+C or SIGTERM)")
    q.add_argument("-q", "--quiet", action="store_true", help="print errors, warnings and the summary only")
    s = sub.add_parser("samples", help="write sample photos (shipped by scikit-learn and scikit-image) to a folder")
    s.add_argument("folder", help="where to write them (created if missing)")
    return parser


# ---------------------------------------------------------------------------------------- signals
class Interrupted(BaseException):
    """SIGTERM or SIGINT, raised where the program was so that every ``finally`` runs.

    A BaseException, like KeyboardInterrupt: ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


@contextmanager
def signals_as_exceptions(signums=(signal.SIGTERM, signal.SIGINT)):
    """While inside, the first SIGTERM or SIGINT raises :class:`Interrupted` in the main thread;
    a second one ends the process at once (the default action), for a user who will not wait.

    A signal the process was started with ignored (``nohup``, a background job) stays ignored.
    Outside the main thread (where Python cannot set handlers) nothing changes. The previous
    handlers are put back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        for s in previous:
            signal.signal(s, signal.SIG_DFL)
        raise Interrupted(signum)

    for signum in signums:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue
        previous[signum] = signal.SIG_DFL if current is None else current
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# ---------------------------------------------------------------------------------- work folders
def _process(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) of process ``pid`` from /proc/<pid>/stat,
    or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the name (field 2) may hold spaces and ')'
    return fields[0].decode("ascii", "replace"), int(fields[19])  # fields 3 and 22 of proc(5)


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _has_proc() -> bool:
    return os.path.isdir("/proc/self")


def owner_record(folder: str) -> dict:
    """What a work folder's marker holds: this process (pid, start time, boot) and the folder's name."""
    me = _process(os.getpid()) if _has_proc() else None
    return {"owner": "kmeans_ops quantize", "pid": os.getpid(), "start": me[1] if me else None,
            "boot": _boot_id(), "token": os.path.basename(folder), "created": time.time()}


def make_work_folder() -> str:
    """A new temporary work folder ``kmeans-work-*`` in TMPDIR, marked as this process's."""
    from .storage import write_json

    try:
        folder = tempfile.mkdtemp(prefix=WORK_PREFIX)
    except OSError as err:
        if is_full(err):
            raise StorageFull(tempfile.gettempdir(), err.errno) from None
        raise
    try:
        write_json(os.path.join(folder, MARKER), owner_record(folder))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def read_marker(folder: str) -> dict | None:
    """The owner record of a work folder made by :func:`make_work_folder` for this user, or None
    when the folder is not one (no marker, a marker of another shape or user, a symlink, ...)."""
    try:
        folder_st = os.lstat(folder)
        st = os.lstat(os.path.join(folder, MARKER))
        if not (stat.S_ISDIR(folder_st.st_mode) and stat.S_ISREG(st.st_mode)) or st.st_size > _MARKER_MAX_BYTES:
            return None
        if hasattr(os, "getuid") and (folder_st.st_uid != os.getuid() or st.st_uid != os.getuid()):
            return None
        with open(os.path.join(folder, MARKER), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("owner") != "kmeans_ops quantize":
        return None
    pid, start = record.get("pid"), record.get("start")
    if type(pid) is not int or pid <= 0 or not (start is None or type(start) is int):
        return None
    if record.get("token") != os.path.basename(folder):  # a marker copied into another folder
        return None
    return record


def owner_alive(record: dict) -> bool:
    """Whether the run that wrote ``record`` is still running. A pid now used by another process
    (its start time differs), a zombie, or a pid of an earlier boot counts as gone."""
    boot = _boot_id()
    if record.get("boot") and boot and record["boot"] != boot:
        return False
    pid = record["pid"]
    if _has_proc() and record.get("start") is not None:
        proc = _process(pid)
        return proc is not None and proc[0] not in ("Z", "X") and proc[1] == record["start"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def sweep_leftovers(keep: tuple[str, ...] = ()) -> list[str]:
    """Remove the work folders in TMPDIR left by runs killed outright (``kill -9``, a crash).

    Only folders named ``kmeans-work-*`` holding this user's marker whose owner is gone; never a
    folder without the marker, never one of a live run, never one of ``keep`` (a ``--work`` folder).
    Returns the folders removed.
    """
    root = tempfile.gettempdir()
    kept = {os.path.realpath(k) for k in keep}
    removed = []
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(WORK_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        if os.path.realpath(entry.path) in kept or not entry.is_dir(follow_symlinks=False):
            continue
        record = read_marker(entry.path)
        if record is None or owner_alive(record):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(entry.path)
    return removed


def _remove_tree(folder: str) -> None:
    """shutil.rmtree that a first SIGTERM/SIGINT arriving meanwhile does not leave half done: the
    removal is finished, then the interruption goes on (a second signal ends the process)."""
    interrupted = None
    for _ in range(2):
        try:
            shutil.rmtree(folder, ignore_errors=True)
            break
        except Interrupted as err:
            interrupted = err
    if interrupted is not None:
        raise interrupted


class WorkFolder:
    """The run's work area: the user's ``--work`` folder (kept), or a marked temporary folder that
    is removed when the block ends, whichever way it ends (SIGTERM and SIGINT included)."""

    def __init__(self, given: str | None):
        self.given = given
        self.path = os.path.abspath(given) if given else None

    def __enter__(self) -> str:
        if not self.given:
            self.path = make_work_folder()
        return self.path

    def __exit__(self, *exc) -> None:
        if not self.given and self.path:
            _remove_tree(self.path)

    def parent(self) -> str:
        """The folder to name when the work area is full: ``--work``, or the temporary folder."""
        return self.path if self.given else os.path.dirname(self.path or os.path.join(tempfile.gettempdir(), "x"))


# ------------------------------------------------------------------------------- output names
def output_files(out: str, stem: str) -> tuple[str, str]:
    """The image and the JSON figures an input with output stem ``stem`` gets in folder ``out``."""
    return os.path.join(out, f"{stem}.png"), os.path.join(out, f"{stem}.json")


def output_names(out: str, stem: str, labels: bool = False) -> list[str]:
    """Every file an input with output stem ``stem`` gets in ``out``: :func:`output_files`, and its
    label map ``<stem>-labels.png`` with ``labels``."""
    from .reconstruct import labels_path

    image, figures = output_files(out, stem)
    return [image, figures] + ([labels_path(image)] if labels else [])


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` leads to (symlinks followed), or None if there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def replaced_input(paths: list[str], stems: list[str], out: str, labels: bool = False) -> InputError | None:
    """The refusal when an output (with ``labels``, the label maps too) would replace an input (the
    same file, through symlinks, hard links or bind mounts alike), else None."""
    from .paths import is_hdfs

    inputs = {}
    for path in paths:
        if not is_hdfs(path):
            inputs.setdefault(_file_id(path), path)
    inputs.pop(None, None)
    for stem in stems:
        for output in output_names(out, stem, labels):
            victim = inputs.get(_file_id(output))
            if victim is not None:
                return InputError(victim, f"writing the results to {shown(out)} would replace this input "
                                          f"(as {shown(os.path.basename(output))}); choose another --out "
                                          f"(nothing was processed)")
    return None


def earlier_output_of(json_path: str, path: str) -> bool:
    """Whether ``json_path`` is the figures file of an earlier run on input ``path`` (its
    ``"source"`` is that input). Unreadable, oversized or other files are not."""
    return earlier_figures(json_path, path) is not None


def earlier_figures(json_path: str, path: str) -> dict | None:
    """The figures in ``json_path`` when it is an earlier output of input ``path``
    (:func:`earlier_output_of`), else None."""
    from .paths import is_hdfs

    try:
        st = os.lstat(json_path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _OWN_JSON_MAX_BYTES:
            return False
        with open(json_path, encoding="utf-8", errors="surrogateescape") as handle:
            figures = json.load(handle)
    except (OSError, ValueError):
        return None
    source = figures.get("source") if isinstance(figures, dict) else None
    if not isinstance(source, str):
        return None
    if is_hdfs(path) or is_hdfs(source):
        return figures if source == path else None
    return figures if os.path.realpath(source) == os.path.realpath(path) else None


def name_taken(out: str, stem: str, path: str, labels: bool = False) -> bool:
    """Whether the outputs named ``stem`` in ``out`` belong to something other than input ``path``:
    either file exists and the JSON is not an earlier output of ``path`` (a folder is always taken).
    With ``labels``, the label map counts too, and an existing one is this input's own only when
    that earlier JSON names it (``"labels"``): an earlier run without ``--labels`` did not write it."""
    names = output_names(out, stem, labels)
    present = [name for name in names if os.path.lexists(name)]
    if not present:
        return False
    if any(os.path.isdir(name) for name in present):
        return True
    figures = earlier_figures(names[1], path)
    if figures is None:
        return True
    label_map = names[2] if labels else None
    if label_map is None or label_map not in present:
        return False
    named = figures.get("labels")
    return not (isinstance(named, str) and os.path.basename(named) == os.path.basename(label_map))


def _free_names(out: str, labels: bool):
    """``taken(stem, path)`` for run.output_stems: :func:`name_taken`, or a name that a stem already
    chosen in this run uses (with ``labels``, input ``a-labels.png``'s image and input ``a.png``'s
    label map). output_stems takes a stem exactly when ``taken`` says no: its names are then claimed."""
    claimed: set[str] = set()

    def taken(stem: str, path: str) -> bool:
        names = {os.path.basename(name).lower() for name in output_names(out, stem, labels)}
        if names & claimed or name_taken(out, stem, path, labels):
            return True
        claimed.update(names)
        return False

    return taken


def plan_outputs(paths: list[str], out: str, labels: bool = False) -> list[str]:
    """The output stem of each input, or InputError when an output would replace an input.

    First the plain names (unique among the inputs) are checked: an output folder holding the
    inputs is refused, not worked around. Then names taken by other files move on to -2, -3, ...
    ``labels``: the label maps ``<stem>-labels.png`` are outputs too.
    """
    from .run import output_stems

    refusal = replaced_input(paths, output_stems(paths), out, labels)
    stems = output_stems(paths, taken=_free_names(out, labels)) if refusal is None else []
    refusal = refusal or replaced_input(paths, stems, out, labels)
    if refusal is not None:
        raise refusal
    return stems


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as err:
        if is_full(err):
            raise StorageFull(os.path.abspath(folder), err.errno) from None
        raise InputError(folder, f"cannot write to the output folder ({err.strerror or err})") from None


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _as_storage_full(err: OSError, work: WorkFolder) -> StorageFull:
    """A full-disk OSError as StorageFull, naming the folder of the file it was writing."""
    if isinstance(err, StorageFull):
        return err
    if err.filename:
        return StorageFull(os.path.dirname(os.path.abspath(os.fsdecode(err.filename))), err.errno)
    return StorageFull(work.path or tempfile.gettempdir(), err.errno)


def no_space_line(err: StorageFull, work: WorkFolder | None, out: str) -> str:
    """The one line for a full disk: which folder, whether it is the work area or the output."""
    if (work is None or work.path is None or not _inside(err.folder, work.path)) and _inside(err.folder, out):
        return (f"error: {err.strerror} in {shown(os.path.abspath(out))} "
                f"(output folder; free some space or choose another --out)")
    where = work.parent() if work is not None else err.folder
    return f"error: {err.strerror} in {shown(where)} (work area; set TMPDIR or --work to a folder with room)"


#: Prefix of the lines that follow an engine's error line (the failing task's stderr tail).
DETAIL = "  | "


def engine_error_lines(engine: str, err: BaseException) -> list[str]:
    """An engine failure as printed: one ``error: <engine> engine: <first line>`` line (so
    ``grep ^error:`` gives one line per error), then the rest of its message (a Hadoop job's
    failing task's stderr tail) on lines prefixed with DETAIL; every line passed through shown(),
    blank lines and line ends (``\\r`` of CRLF) left out."""
    first, *rest = [line.rstrip() for line in str(err).strip().split("\n")]
    return [f"error: {engine} engine: {shown(first)}"] + [DETAIL + shown(line) for line in rest if line]


# ------------------------------------------------------------------------------------ the run
def quantize(args) -> int:
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    from . import cli_cluster
    from .paths import is_hdfs
    from .run import expand_inputs

    try:
        check_schemes(args)
        params = P.validate(k=args.k, init=args.init, seed=args.seed, max_iter=args.max_iter, delta=args.delta,
                            palette=args.palette, labels=args.labels, dither=args.dither, quality=args.quality,
                            max_k=args.max_k, keep=args.keep, skip_if_larger=args.skip_if_larger)
        batch_size = P.integer("batch_size", args.batch_size, 1, MAX_BATCH_SIZE)
        paths = expand_inputs(args.inputs)
        on_hdfs = is_hdfs(args.out)
        if on_hdfs and paths and (reason := cli_cluster.refusal(args, paths, params)):
            raise P.ParamError(reason)
        if paths and not on_hdfs:
            _check_writable(args.out)
    except (P.ParamError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StorageFull as err:
        print(no_space_line(err, None, args.out), file=sys.stderr)
        return 3
    if not paths:
        print(f"error: no images found in {', '.join(shown(i) for i in args.inputs)}", file=sys.stderr)
        return 2
    if on_hdfs:  # every stage a job on the cluster, results published on HDFS (kmeans_ops.cli_cluster)
        engine = _engine(args)
        return 2 if engine is None else cli_cluster.run(args, params, batch_size, paths, engine, say)
    with output_lock(args.out, say):  # another run into this folder finishes first: no name is lost
        try:
            stems = plan_outputs(paths, args.out, labels=params.labels)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return _quantize(args, params, batch_size, paths, stems, say)


def check_schemes(args) -> None:
    """ParamError naming the option when a path names a filesystem the CLI does not use: inputs may
    be local or ``hdfs://``; ``--out`` too with ``--engine hadoop`` (kmeans_ops.cli_cluster), else
    local; ``--work``, ``--init`` and ``--palette`` files are local (a local folder literally named
    ``hdfs:`` is never what ``hdfs://...`` meant); so is a ``--keep`` file."""
    from .paths import check_scheme, is_hdfs

    for item in args.inputs:
        check_scheme("INPUT", item)
    if args.engine != "hadoop" and is_hdfs(args.out):
        raise P.ParamError(f"--out: {shown(args.out)} is not supported with --engine {args.engine}: "
                           "an hdfs:// output needs --engine hadoop")
    check_scheme("--out", args.out, supported=(None, "hdfs") if args.engine == "hadoop" else (None,))
    if args.work:
        check_scheme("--work", args.work, supported=(None,))
    if args.init not in P.INIT_METHODS:
        check_scheme("--init", args.init, supported=(None,))
    if args.palette not in P.PALETTE_MODES:
        check_scheme("--palette", args.palette, supported=(None,))
    if args.keep and not args.keep.lstrip().startswith("#"):
        check_scheme("--keep", args.keep, supported=(None,))


@contextmanager
def output_lock(folder: str, say):
    """An exclusive lock on the output folder (``flock`` on the folder itself: no file is left in
    it), held while a run chooses its output names and writes them, so two runs into one folder
    never write the same name: the second waits, then sees the first's outputs."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # cannot be opened (it was checked writable): run unlocked rather than not at all
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another run writing into {shown(os.path.abspath(folder))}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks
            pass
        yield
    finally:
        os.close(fd)


def _engine(args):
    """The run's engine, ready; None (the error printed) when it cannot start."""
    from .engines import get_engine

    try:
        engine = get_engine(args.engine)
        engine.prepare()
    except Exception as err:  # noqa: BLE001 - a missing Hadoop client or connection: say what
        print(f"error: engine {args.engine}: {shown(str(err))}", file=sys.stderr)
        return None
    return engine


def _quantize(args, params, batch_size: int, paths: list[str], stems: list[str], say) -> int:
    engine = _engine(args)
    if engine is None:
        return 2
    for folder in sweep_leftovers(keep=(args.work,) if args.work else ()):
        say(f"removed {shown(folder)}: the work folder of an earlier run that was killed")
    work = WorkFolder(args.work)
    try:
        with work as root:
            return _run(args, params, batch_size, engine, list(zip(paths, stems)), root, say)
    except OSError as err:  # StorageFull from storage.py, or a full disk met by any other write
        if not is_full(err):
            raise
        print(no_space_line(_as_storage_full(err, work), work, args.out), file=sys.stderr)
        return 3
    except Interrupted as err:
        fate = f"the work folder {shown(work.path)} is kept (--work)" if args.work else "the work folder was removed"
        print(f"interrupted: {err.name}; {fate}; outputs already written are complete", file=sys.stderr)
        return err.status


def _run(args, params, batch_size: int, engine, plan: list[tuple[str, str]], work: str, say) -> int:
    """Ingest, iterate and reconstruct every (input, output stem) of ``plan`` with work area ``work``.

    A bad image fails alone (exit 1); StorageFull and Interrupted end the run (the caller says so).
    """
    from . import palette
    from .driver import print_progress, run_iterations, run_palette
    from .ingest import ingest
    from .reconstruct import finish
    from .run import image_id_of
    from .search import search
    from .workarea import WorkArea

    local = WorkArea(work)
    area = local
    staged_from = local  # what the engine stages: the work area, or with a shared palette its unit's alone
    failures: dict[str, str] = {}
    started = time.perf_counter()
    held = 0  # bytes of decoded images kept in memory for reconstruction (up to KEEP_BYTES)
    kept = {}

    def failed(path: str, problem: str) -> None:
        failures[path] = problem
        print(f"error: {problem}", file=sys.stderr, flush=True)

    shared = palette.mode(params) != "image"  # one palette for every image: "run" or a palette file
    unit = None  # the palette unit (kmeans_ops.palette) of a shared palette
    try:
        ready = []  # (path, stem, image id)
        for path, stem in plan:
            image_id = image_id_of(stem)
            try:
                meta, image, table = ingest(path, image_id, local, params, keep=True)
                if not shared and not params.auto:  # a shared palette iterates the union only, k auto its candidates
                    engine.remember(local, image_id, table)
                size = (image.bgr.nbytes if image is not None else 0) + table.codes.nbytes * 3
                if held + size <= KEEP_BYTES:
                    kept[image_id] = (image, table)
                    held += size
                del image, table
                ready.append((path, stem, image_id))
                say(f"read {shown(path)}: {meta['pixels']} pixels, {meta['distinct_colours']} distinct colours, "
                    + ("shared palette" if shared else "k auto" if params.auto else f"k={meta['k']}"))
                for text in meta.get("warnings", []):
                    print(f"warning: {shown(path)}: {shown(text)}", file=sys.stderr, flush=True)
            except InputError as err:
                failed(path, str(err))
            except MemoryError:
                failed(path, f"{shown(path)}: out of memory")
        if shared and ready:
            try:
                unit, union = palette.prepare(local, [image_id for _, _, image_id in ready], params,
                                              {image_id: table for image_id, (_, table) in kept.items()}, keep=True)
            except InputError as err:  # the palette file changed since it was checked, or the union is too big
                print(f"error: {err}", file=sys.stderr)
                return 2
            if union is not None:  # one palette for the run: the engine stages (and iterates) its unit alone
                staged_from = palette.unit_area(local, unit)
                engine.remember(staged_from, unit, union)
            del union
        runs = {}
        searched = {}  # k auto: per image its chosen candidate unit (kmeans_ops.search), or why none
        try:
            key = f"cli-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            if ready and palette.mode(params) != "file" and not params.auto:  # a fixed palette runs no job
                area = engine.stage(staged_from, key)
            if params.auto:  # rounds of candidates, each staged by itself
                progress = None if args.quiet else print_progress(params.max_iter)
                for lo in range(0, len(ready), batch_size):
                    batch = [image_id for _, _, image_id in ready[lo : lo + batch_size]]
                    searched.update(search(local, batch, {i: kept[i][1] for i in batch if i in kept}, engine, params,
                                           f"{key}-{lo}", progress, say))
                runs = {i: found["state"] for i, found in searched.items() if "unit" in found}
            elif unit is None:
                progress = None if args.quiet else print_progress(params.max_iter)
                for lo in range(0, len(ready), batch_size):
                    batch = [image_id for _, _, image_id in ready[lo : lo + batch_size]]
                    runs.update(run_iterations(area, batch, engine, params, progress))
            else:  # one job per iteration for the whole run, then the final palette brought back
                progress = None if args.quiet else print_progress(params.max_iter, shared_by=len(ready))
                state = run_palette(area, unit, engine, params, progress)
                runs = {image_id: state for _, _, image_id in ready}
                if area is not local:  # the unit's final centroids, back beside the images
                    engine.fetch(area, unit, local.root)
        except RuntimeError as err:  # HDFS or the Hadoop job failed for good: nothing is written
            print("\n".join(engine_error_lines(args.engine, err)), file=sys.stderr)
            return 3
        extra = {"params": params.to_json(), "engine": engine.name}
        if unit is not None:
            extra["palette"] = palette.describe(params, len(ready))
        for path, stem, image_id in ready:
            if image_id in searched and "unit" not in searched[image_id]:  # cannot reach the minimum quality
                kept.pop(image_id, None)
                failed(path, searched[image_id]["error"])
                continue
            out_image, out_json = output_files(args.out, stem)
            new_images = [f for f in output_names(args.out, stem, params.labels)  # image, label map
                          if f != out_json and not os.path.lexists(f)]
            try:
                image, table = kept.pop(image_id, (None, None))
                # a shared palette: the image's own files never left the local work area
                where = local if unit is not None or params.auto else engine.fetch(area, image_id, local.root)
                chosen = searched.get(image_id, {})
                result = finish(where, image_id, runs[image_id], out_image, out_json,
                                {**extra, "quality": chosen["quality"]} if chosen else extra, image=image, table=table,
                                palette_unit=chosen.get("unit", unit), labels=params.labels, dither=params.dither,
                                skip_if_larger=params.skip_if_larger)
                del image, table
                psnr = "inf" if result["psnr"] is None else f"{result['psnr']:.2f}"
                state = ("fixed palette" if palette.mode(params) == "file"
                         else "converged" if result["converged"] else "stopped at max_iter")
                if result.get("skipped"):
                    say(f"skipped the image of {shown(path)}: its PNG would be {result['output_bytes_would_be']} "
                        f"bytes, more than the input's {result['source_bytes']} (--skip-if-larger); wrote "
                        f"{shown(out_json)}")
                    continue
                size = (f", {result['output_bytes']} bytes ({result['size_ratio']:.0%} of the input)"
                        if result.get("size_ratio") is not None else "")
                say(f"wrote {shown(result['output'] or out_json)}: k={result['k']}"
                    + (" (auto)" if chosen else "") + f", {result['iterations']} iterations ({state}), "
                    f"PSNR {psnr} dB{size}")
            except StorageFull:
                for written in new_images:  # its JSON could not follow: no lone image or label map
                    if os.path.lexists(written):
                        os.unlink(written)
                raise
            except InputError as err:
                failed(path, str(err))
            except (OSError, RuntimeError) as err:  # RuntimeError: HDFS, fetching its results
                failed(path, f"{shown(path)}: {shown(str(err))}")
    finally:
        if area not in (local, staged_from):  # a copy the engine made (HDFS)
            try:
                engine.discard(area)
            except RuntimeError as err:
                print(f"warning: could not remove the work area {shown(area.root)}: {shown(str(err))}", file=sys.stderr)
    done = len(plan) - len(failures)
    print(f"{done} of {len(plan)} image(s) done in {time.perf_counter() - started:.1f}s; results in "
          f"{shown(os.path.abspath(args.out))}" + (f"; {len(failures)} failed" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with signals_as_exceptions():
        try:
            if args.command == "quantize":
                return quantize(args)
            if args.command == "samples":
                from .samples import write_samples

                for path in write_samples(args.folder):
                    print(path)
                return 0
        except Interrupted as err:  # before or after the run's own handling (e.g. while starting up)
            print(f"interrupted: {err.name}", file=sys.stderr)
            return err.status
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
