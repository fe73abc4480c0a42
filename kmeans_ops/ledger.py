"""What the nightly DAG has already sent to the pipeline: a ledger keyed by file content, and the
scan of landing roots that finds the images not processed before.

No Airflow here: ``kmeans_nightly`` calls these functions from its tasks, tests call them directly.

Ledger file (JSON, written atomically)::

    {"version": 2,
     "files": {"<content key>": {"path": "/landing/a/x.jpg", "size": 12345,
                                 "first_seen": "2025-01-01T02:00:00+00:00",
                                 "run_id": "<the kmeans_image_clustering run>"}}}

Keyed by content (``fs.content_key``, kmeans_ops.paths): a renamed or copied file has a known key
and is not redone; a changed file (same name, new content) has a new key and is redone. Same
bytes, same key, per kind of filesystem: ``sha256:<hex>`` for a local file (its bytes read and
hashed), ``hdfs-<algorithm>:<hex>`` for a file on HDFS (the file checksum the DataNodes compute
from the CRCs they store: nothing of the file is read by the worker). Keys of different kinds
never compare equal: the same photo in a local and in an HDFS landing root is processed once per
root kind. ``path`` is where the content was first seen, kept for people reading the file.

Version 1 ledgers (before HDFS keys) held bare SHA-256 hex digests, of local and HDFS files alike:
loaded, they read as ``sha256:`` keys (saved as version 2). A local file keeps its key. An HDFS file
recorded then is matched once more by SHA-256 (:func:`adopt_legacy`: read only when its size equals
a legacy HDFS entry's), and its checksum key recorded beside the old entry, so it is not redone.

Only **settled** files are taken (:func:`settled`, the one rule for every filesystem): a file last
modified less than ``settle_seconds`` ago, still open for writing, or that changed while its key
was computed, is logged as not settled and left out of the scan; it is neither triggered nor
recorded, and a later scan takes it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from datetime import datetime, timezone

from . import settings
from .errors import shown
from .paths import SHA256_KEY, LocalFS, StillBeingWritten
from .storage import write_json

log = logging.getLogger(__name__)

VERSION = 2
#: Versions Ledger.load reads (1: bare SHA-256 digests, read as ``sha256:`` keys).
READABLE = (1, 2)
#: A folder holding both files is a published run of kmeans_image_clustering (kmeans_ops.publish).
PUBLISHED_MARKERS = ("summary.json", "report.html")
NS = 1_000_000_000
#: A key of the ledger's "files": ``sha256:<64 hex>`` or ``hdfs-<algorithm>:<hex>[:<length>]``.
_KEY = re.compile(r"sha256:[0-9a-f]{64}|hdfs-[a-z0-9-]{1,64}:[0-9a-f]{1,256}(:[0-9]{1,20})?")
#: A key of a version 1 ledger: a SHA-256 hex digest, as hashlib writes it.
_V1_DIGEST = re.compile(r"[0-9a-f]{64}")

#: A file's (size in bytes, modification time in ns since the epoch), as read at one moment.
Stamp = tuple[int, int]


class LedgerError(Exception):
    """The ledger file cannot be used; ``str()`` names the file and the problem."""


class Ledger:
    """Content keys already handed to kmeans_image_clustering, stored in one JSON file."""

    def __init__(self, path: str, files: dict[str, dict] | None = None):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.files: dict[str, dict] = dict(files or {})

    @classmethod
    def load(cls, path: str) -> Ledger:
        """The ledger stored at ``path``: empty if the file does not exist, LedgerError if corrupt."""
        path = os.path.abspath(os.path.expanduser(path))
        name = shown(path)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return cls(path)
        except UnicodeDecodeError:  # its text quotes the byte found: say what was expected instead
            raise LedgerError(f"ledger {name}: cannot read it (not UTF-8; expected a JSON file)") from None
        except OSError as err:
            raise LedgerError(f"ledger {name}: cannot read it ({err.strerror or type(err).__name__})") from None
        fix = "repair it, or move it aside to start an empty ledger (every landed image is then processed again)"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LedgerError(f"ledger {name} is corrupt (not JSON at line {err.lineno} column {err.colno}); "
                              f"{fix}") from None
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise LedgerError(f'ledger {name} is corrupt (expected an object with a "files" object); {fix}')
        version = data.get("version")
        if version not in READABLE:
            raise LedgerError(f"ledger {name}: unsupported version (expected one of {', '.join(map(str, READABLE))})")
        files = {}
        for number, (key, entry) in enumerate(data["files"].items(), start=1):
            if version == 1 and isinstance(key, str) and _V1_DIGEST.fullmatch(key):
                key = SHA256_KEY + key
            if not isinstance(entry, dict) or not _KEY.fullmatch(key):
                expected = "a 64-hex digest" if version == 1 else "a content key (sha256:... or hdfs-...:...)"
                raise LedgerError(f"ledger {name} is corrupt (entry {number} is not {expected} with an object); {fix}")
            files[key] = entry
        if version == 1 and files:
            log.info("ledger %s: version 1 (%d SHA-256 entries) read as version 2; saved as version 2 when next "
                     "written", name, len(files))
        return cls(path, files)

    def __len__(self) -> int:
        return len(self.files)

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def is_known(self, key: str) -> bool:
        return key in self.files

    def record(self, key: str, path: str, size: int, run_id: str | None, first_seen: str | None = None) -> bool:
        """Remember the content key ``key``; a key already known keeps its first entry. True if it was new."""
        if key in self.files:
            return False
        self.files[key] = {
            "path": path,
            "size": int(size),
            "first_seen": first_seen or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id,
        }
        return True

    def save(self) -> None:
        """Write the ledger atomically (temporary file in the same folder, then rename)."""
        write_json(self.path, {"version": VERSION, "files": dict(sorted(self.files.items()))})


def settled(before: Stamp, after: Stamp, now_ns: int, settle_seconds: float, read: int | None = None,
            writing: bool = False) -> bool:
    """Whether a landed file may be taken: the settling rule of the nightly scan, for every filesystem.

    ``before`` and ``after`` are the file's (size, mtime in ns) read just before and just after it
    was hashed (its content key computed), ``now_ns`` the clock (ns since the epoch) when ``before``
    was read, ``read`` the number of bytes hashed (None: not hashed yet, or a key computed without
    reading the file, an HDFS checksum), ``writing`` whether the filesystem reports the
    file still open for writing (HDFS does; a local filesystem cannot tell). Settled when all hold:

    - it was last modified at least ``settle_seconds`` before ``now_ns`` (0: no age is required, so
      a clock skew between a NameNode and this worker cannot hold a file back);
    - it did not change while hashed: ``after == before`` (a file written while hashed is not settled);
    - the bytes hashed are its whole listed size, and it is not open for writing: HDFS lists a file
      being written at the length of its completed blocks and with the time it was created, while
      a read returns what the DataNodes already hold.

    Called with ``after = before`` and no ``read`` before hashing, it tells whether the file is
    old enough to be worth hashing at all.
    """
    size, mtime_ns = before
    old_enough = settle_seconds <= 0 or now_ns - mtime_ns >= settle_seconds * NS
    return old_enough and after == before and (read is None or read == size) and not writing


def _not_settled(path: str, before: Stamp, after: Stamp, now_ns: int, settle_seconds: float,
                 read: int | None = None, writing: bool = False) -> str:
    """The one log line of a file left for a later run: why, its age and the setting."""
    age = max(0.0, (now_ns - after[1]) / NS)
    if after != before:
        why = f"changed while being hashed ({before[0]} -> {after[0]} bytes), "
    elif writing:
        why = "still open for writing, "
    elif read is not None and read != before[0]:
        why = f"still being written ({read} bytes read, {before[0]} listed), "
    else:
        why = ""
    return (f"{shown(path)}: not settled, left for a later run ({why}last modified {age:.0f} s ago; "
            f"settle_seconds {settle_seconds:g})")


def key_if_settled(path: str, stamp, content_key, settle_seconds: float, writing=None,
                   clock=time.time_ns, before: Stamp | None = None) -> tuple[str, int] | None:
    """(content key, size) of the landed file ``path`` if it has settled (see settled); else
    None, after logging one line with why, its age and the setting.

    ``stamp()`` reads the file's (size, mtime_ns); ``content_key()`` returns (its content key,
    bytes read to compute it, or None when nothing was read: an HDFS checksum; it raises
    paths.StillBeingWritten for a file it can tell is open for writing); ``writing()``, when the
    filesystem can tell, whether the file is still open for writing once the key is computed;
    ``before``, the file's stamp when the caller has just read it (else ``stamp()`` is called). A
    file too young gets no key at all. Their other errors (OSError, HdfsError) go to the caller.
    """
    before = stamp() if before is None else before
    now = clock()
    if not settled(before, before, now, settle_seconds):
        log.info(_not_settled(path, before, before, now, settle_seconds))
        return None
    try:
        digest, read = content_key()
    except StillBeingWritten:
        log.info(_not_settled(path, before, before, clock(), settle_seconds, writing=True))
        return None
    after = stamp()
    still_writing = bool(writing and writing())
    if not settled(before, after, now, settle_seconds, read, still_writing):
        log.info(_not_settled(path, before, after, clock(), settle_seconds, read, still_writing))
        return None
    return digest, before[0]


def sha256_file(path: str) -> str:
    """SHA-256 of a local file's content, read in chunks (a huge file is never held in memory)."""
    return LocalFS().sha256(path)[0]


def local_key(path: str) -> str:
    """The content key of a local file (``sha256:<hex>``), as the scan records it."""
    return LocalFS().content_key(path)[0]


def list_root(root: str, exclude: list[str] | tuple[str, ...] = (),
              settle_seconds: float = settings.DEFAULT_SETTLE_SECONDS, allowed=None) -> list[dict]:
    """The settled images under one landing root with their content keys (``digest``, see
    paths.LocalFS/HdfsFS.content_key): [{"path", "folder", "digest", "size"}].

    Local or ``hdfs://`` (kmeans_ops.paths.filesystem), with the same rules: walked recursively
    without following folder symlinks; hidden files and folders (name starting with '.', e.g.
    uploads in progress, our staging folders), folders in ``exclude`` (our output and work roots)
    and published run folders (holding summary.json and report.html) are skipped; with
    ``allowed`` (paths.AllowedRoots), so is a file that resolves outside them (a symlink out). A
    file that has not settled (see settled) is logged and left out. A missing root is logged and
    gives nothing; a file that vanishes or cannot be read is logged and skipped.
    """
    from .hdfs import HdfsError
    from .paths import IMAGE_EXTENSIONS, filesystem, within

    fs = filesystem(root)
    top = fs.resolve(root)
    st = fs.stat(top)
    if st is None or not st.is_dir:
        log.warning("landing root %s does not exist or is not a folder: skipped", shown(root))
        return []
    exclude = [e for e in exclude if e]
    if within(top, exclude):
        log.warning("landing root %s lies inside an output or work folder: skipped", shown(root))
        return []
    found = []
    for folder, dirs, names in fs.walk(top):
        if set(PUBLISHED_MARKERS) <= set(names):
            log.info("skipping %s: a published kmeans run", shown(folder))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not within(fs.join(folder, d), exclude))
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = fs.join(folder, name)
            if allowed is not None and not allowed.contains(path):
                log.warning("%s resolves outside the %s: skipped", shown(path), allowed.rule())
                continue
            try:
                st = fs.stat(path)
                if st is None or st.is_dir:
                    continue
                taken = key_if_settled(path, lambda: _stamp(fs, path), lambda: fs.content_key(path), settle_seconds,
                                       lambda: fs.writing(path), before=(st.size, st.mtime_ns))
            except (OSError, HdfsError) as err:
                log.warning("cannot read %s: %s (skipped)", shown(path), getattr(err, "strerror", None) or err)
                continue
            if taken:
                found.append({"path": path, "folder": folder, "digest": taken[0], "size": taken[1]})
    return found


def _stamp(fs, path: str) -> Stamp:
    st = fs.stat(path)
    if st is None:
        raise FileNotFoundError(2, "vanished", path)
    return st.size, st.mtime_ns


def scan(roots: list[str], exclude: list[str] | tuple[str, ...] = (),
         settle_seconds: float = settings.DEFAULT_SETTLE_SECONDS, allowed=None) -> list[dict]:
    """Every settled image under the landing ``roots``: [{"path", "folder", "digest", "size"}]
    sorted by path.

    See list_root for what is skipped (``allowed``: the allowed roots, for files that resolve
    outside them) and settled for the settling rule (``settle_seconds``). A file under two
    overlapping roots is listed once.
    """
    by_path: dict[str, dict] = {}
    for root in roots:
        for item in list_root(root, exclude, settle_seconds, allowed):
            by_path.setdefault(item["path"], item)
    return [by_path[p] for p in sorted(by_path)]


def new_files(found: list[dict], ledger: Ledger) -> list[dict]:
    """The files of ``found`` whose content the ledger does not know, each content once.

    Identical content found twice in the same scan (copies) keeps only its first path, in the
    order of ``found`` (sorted by path after scan).
    """
    seen: set[str] = set()
    new = []
    for item in found:
        digest = item["digest"]
        if ledger.is_known(digest) or digest in seen:
            continue
        seen.add(digest)
        new.append(item)
    return new


def adopt_legacy(found: list[dict], ledger: Ledger) -> int:
    """Carry the entries of a version 1 ledger over to HDFS checksum keys; returns how many.

    A version 1 ledger keyed HDFS files by the SHA-256 of their bytes (read through WebHDFS); the
    scan now keys them by their HDFS checksum. For each file of ``found`` whose key is not
    ``sha256:`` and not known, and whose size equals that of a ``sha256:`` entry first seen on
    ``hdfs://`` (an old HDFS entry), the file is read once to compute its SHA-256; if that is a
    known entry, the new key is recorded with the old entry's fields (plus ``"sha256"``, the old
    key), so the file is known. Files of sizes no old HDFS entry still unmatched has are not read;
    once every old HDFS entry has been matched, nothing is read any more (an old entry whose file
    is gone keeps costing one read of each new file of exactly its size, until that file is
    recorded). The old entries stay. The caller saves the ledger (not in a dry run).
    """
    from .paths import filesystem

    matched = {entry.get("sha256") for entry in ledger.files.values()}
    sizes = {entry.get("size") for key, entry in ledger.files.items()
             if key.startswith(SHA256_KEY) and key not in matched
             and str(entry.get("path", ""))[:7].lower() == "hdfs://"}
    if not sizes:
        return 0
    adopted = 0
    for item in found:
        if item["digest"].startswith(SHA256_KEY) or ledger.is_known(item["digest"]) or item["size"] not in sizes:
            continue
        from .hdfs import HdfsError

        try:
            digest, read = filesystem(item["path"]).sha256(item["path"])
        except (OSError, HdfsError) as err:
            log.warning("cannot read %s to match it with the old ledger entries: %s (taken as new)",
                        shown(item["path"]), getattr(err, "strerror", None) or err)
            continue
        old = ledger.files.get(SHA256_KEY + digest)
        if old is not None and read == item["size"]:
            ledger.files[item["digest"]] = {**old, "sha256": SHA256_KEY + digest}
            adopted += 1
            log.info("%s: known by its SHA-256 (ledger version 1 entry, first seen as %s); its HDFS checksum "
                     "key is recorded beside it", shown(item["path"]), shown(str(old.get("path"))))
    return adopted


def record_runs(ledger: Ledger, plans: list[dict], run_exists) -> tuple[int, list[dict]]:
    """Record the files of each planned run (``{"trigger_run_id", "files": [{"path", "digest",
    "size"}]}``) for which ``run_exists(run_id)`` is true, and save the ledger if anything was new.
    Returns (files newly recorded, plans whose run does not exist: their files stay unrecorded)."""
    recorded, missing = 0, []
    for plan in plans:
        if not run_exists(plan["trigger_run_id"]):
            missing.append(plan)
            continue
        for f in plan["files"]:
            recorded += ledger.record(f["digest"], f["path"], f["size"], plan["trigger_run_id"])
    if recorded:
        ledger.save()
    return recorded, missing


def group_by_folder(files: list[dict], max_per_group: int | None = None) -> list[dict]:
    """[{"folder", "files": [...]}] in folder order; a folder with more than ``max_per_group``
    files is split into consecutive groups of at most that many."""
    folders: dict[str, list[dict]] = {}
    for item in files:
        folders.setdefault(item["folder"], []).append(item)
    groups = []
    for folder in sorted(folders):
        items = folders[folder]
        step = max_per_group or len(items)
        for i in range(0, len(items), step):
            groups.append({"folder": folder, "files": items[i : i + step]})
    return groups
