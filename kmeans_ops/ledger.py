"""What the nightly DAG has already sent to the pipeline: a ledger keyed by file content, and the
scan of landing roots that finds the images not processed before.

No Airflow here: ``kmeans_nightly`` calls these functions from its tasks, tests call them directly.

Ledger file (JSON, written atomically)::

    {"version": 1,
     "files": {"<sha256 of the content>": {"path": "/landing/a/x.jpg", "size": 12345,
                                           "first_seen": "2025-01-01T02:00:00+00:00",
                                           "run_id": "<the kmeans_image_clustering run>"}}}

Keyed by content: a renamed or copied file has a known digest and is not redone; a changed file
(same name, new content) has a new digest and is redone. ``path`` is where the content was first
seen, kept for people reading the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone

from .storage import write_json

log = logging.getLogger(__name__)

VERSION = 1
CHUNK = 1 << 20  # bytes read at a time when hashing
#: A folder holding both files is a published run of kmeans_image_clustering (kmeans_ops.publish).
PUBLISHED_MARKERS = ("summary.json", "report.html")


class LedgerError(Exception):
    """The ledger file cannot be used; ``str()`` names the file and the problem."""


class Ledger:
    """Content digests already handed to kmeans_image_clustering, stored in one JSON file."""

    def __init__(self, path: str, files: dict[str, dict] | None = None):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.files: dict[str, dict] = dict(files or {})

    @classmethod
    def load(cls, path: str) -> Ledger:
        """The ledger stored at ``path``: empty if the file does not exist, LedgerError if corrupt."""
        path = os.path.abspath(os.path.expanduser(path))
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError) as err:
            raise LedgerError(f"ledger {path}: cannot read it ({err})") from None
        fix = "repair it, or move it aside to start an empty ledger (every landed image is then processed again)"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LedgerError(f"ledger {path} is corrupt (not JSON: {err}); {fix}") from None
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise LedgerError(f'ledger {path} is corrupt (expected an object with a "files" object); {fix}')
        if data.get("version") != VERSION:
            raise LedgerError(f"ledger {path}: unsupported version {data.get('version')!r} (expected {VERSION})")
        for digest, entry in data["files"].items():
            if not isinstance(entry, dict) or len(digest) != 64:
                raise LedgerError(f"ledger {path} is corrupt (bad entry {digest!r}); {fix}")
        return cls(path, data["files"])

    def __len__(self) -> int:
        return len(self.files)

    def __contains__(self, digest: str) -> bool:
        return digest in self.files

    def is_known(self, digest: str) -> bool:
        return digest in self.files

    def record(self, digest: str, path: str, size: int, run_id: str | None, first_seen: str | None = None) -> bool:
        """Remember ``digest``; a digest already known keeps its first entry. True if it was new."""
        if digest in self.files:
            return False
        self.files[digest] = {
            "path": path,
            "size": int(size),
            "first_seen": first_seen or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id,
        }
        return True

    def save(self) -> None:
        """Write the ledger atomically (temporary file in the same folder, then rename)."""
        write_json(self.path, {"version": VERSION, "files": dict(sorted(self.files.items()))})


def sha256_file(path: str) -> str:
    """SHA-256 of a file's content, read in chunks (a huge file is never held in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _inside(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def list_root(root: str, exclude: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """The images under one landing root, hashed: [{"path", "folder", "digest", "size"}].

    The one place that knows how to list a root: HDFS roots plug in here later. Local roots are
    walked recursively without following folder symlinks; hidden files and folders (name starting
    with '.', e.g. uploads in progress, our staging folders), folders in ``exclude`` (our output and
    work roots) and published run folders (holding summary.json and report.html) are skipped. A
    missing root is logged and gives nothing; a file that vanishes while being hashed is skipped.
    """
    from .hdfs import is_hdfs

    if is_hdfs(root):
        return _list_hdfs_root(root)
    from .ingest import IMAGE_EXTENSIONS

    top = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(top):
        log.warning("landing root %s does not exist or is not a folder: skipped", root)
        return []
    exclude = [os.path.abspath(os.path.expanduser(e)) for e in exclude if e]
    if _inside(top, exclude):
        log.warning("landing root %s lies inside an output or work folder %s: skipped", root, exclude)
        return []
    found = []

    def walk_error(err: OSError) -> None:
        log.warning("cannot list %s: %s (skipped)", err.filename, err.strerror or err)

    for folder, dirs, names in os.walk(top, onerror=walk_error):
        if set(PUBLISHED_MARKERS) <= set(names):
            log.info("skipping %s: a published kmeans run", folder)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(os.path.join(folder, d), exclude))
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(folder, name)
            try:
                if not os.path.isfile(path):
                    continue
                size = os.path.getsize(path)
                digest = sha256_file(path)
            except OSError as err:
                log.warning("cannot read %s: %s (skipped)", path, err.strerror or err)
                continue
            found.append({"path": path, "folder": folder, "digest": digest, "size": size})
    return found


def _list_hdfs_root(root: str) -> list[dict]:
    """list_root for an ``hdfs://`` landing root, through WebHDFS (same skipping rules)."""
    import posixpath

    from .hdfs import Hdfs, HdfsError, hdfs_path
    from .ingest import IMAGE_EXTENSIONS

    hdfs = Hdfs()
    top = hdfs_path(root)
    prefix = root[: root.index(top)] if top != "/" and top in root else root.rstrip("/")
    if not hdfs.exists(top):
        log.warning("landing root %s does not exist: skipped", root)
        return []
    found = []
    for folder, dirs, names in hdfs._call("walk", top, lambda: list(hdfs.client.walk(top))):
        if set(PUBLISHED_MARKERS) <= set(names) or any(part.startswith(".") for part in folder.split("/")):
            continue
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = posixpath.join(folder, name)
            digest = hashlib.sha256()
            try:
                def read():
                    with hdfs.client.read(path, chunk_size=CHUNK) as reader:
                        for chunk in reader:
                            digest.update(chunk)
                hdfs._call("read", path, read)
                size = hdfs._call("status", path, hdfs.client.status, path)["length"]
            except HdfsError as err:
                log.warning("cannot read %s: %s (skipped)", path, err)
                continue
            found.append({"path": prefix + path, "folder": prefix + folder, "digest": digest.hexdigest(), "size": size})
    return found


def scan(roots: list[str], exclude: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """Every image under the landing ``roots``: [{"path", "folder", "digest", "size"}] sorted by path.

    See list_root for what is skipped. A file under two overlapping roots is listed once.
    """
    by_path: dict[str, dict] = {}
    for root in roots:
        for item in list_root(root, exclude):
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
