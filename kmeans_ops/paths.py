"""Every user path goes through here: which filesystem it is on, how it is resolved, and whether a
DAG param may name it.

- **One choice by URI** (as mrjob's composite filesystem): :func:`filesystem` returns
  :class:`LocalFS` for a local path and :class:`HdfsFS` for an ``hdfs://`` URI (through WebHDFS,
  kmeans_ops.hdfs). Both offer the same few operations (stat, list, glob, walk, read in chunks, a
  local copy to decode), so ingest, reconstruction, input expansion and the nightly scan are
  written once, with no branch on the scheme.
- **Resolution**: a local path is made absolute with ``~`` expanded and every symlink and ``..``
  resolved (``os.path.realpath``); an ``hdfs://`` URI has its path normalised (``..``, ``.``,
  doubled slashes). HDFS I/O always goes to the NameNode of the WebHDFS connection, so the host in
  a URI does not change which file is meant: containment compares paths only.
- **Allowed roots** (:class:`AllowedRoots`): the folders DAG params and nightly configuration may
  name (Airflow Variable ``kmeans_allowed_roots``; see settings.allowed_roots). A path is inside
  when its resolved form is a root or lies under one: a symlink inside a root that points outside
  is outside. The CLI, run by a person on their own files, has no allow-list.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import logging
import os
import posixpath
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import InputError, shown
from .params import ParamError

log = logging.getLogger(__name__)

#: File name endings read as images (OpenCV decodes them); anything else in a folder is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif")
GLOB_CHARS = "*?["
CHUNK = 1 << 20  # bytes read at a time when hashing


class PathNotAllowed(ParamError):
    """A param names a path outside the allowed roots; the message names the param and the rule."""


@dataclass(frozen=True)
class Stat:
    size: int
    mtime_ns: int
    is_dir: bool


def is_hdfs(path: str) -> bool:
    """An ``hdfs://`` URI (the scheme is case-insensitive)."""
    return path[:7].lower() == "hdfs://"


def is_glob(path: str) -> bool:
    return any(ch in path for ch in GLOB_CHARS)


def _inside(path: str, root: str, sep: str) -> bool:
    return path == root or path.startswith(root.rstrip(sep) + sep)


def within(path: str, folders) -> bool:
    """Whether the resolved ``path`` is one of ``folders`` (resolved) or lies under one, on the
    same filesystem (HDFS paths compare without their host, see the module docstring)."""
    real = resolve(path)
    for folder in folders:
        if is_hdfs(folder) != is_hdfs(real):
            continue
        if is_hdfs(real) and _inside(HdfsFS.split(real)[1], HdfsFS.split(resolve(folder))[1], "/"):
            return True
        if not is_hdfs(real) and _inside(real, resolve(folder), os.sep):
            return True
    return False


def sha256_chunks(chunks) -> tuple[str, int]:
    """(SHA-256 hex digest, total bytes) of an iterable of byte chunks."""
    digest = hashlib.sha256()
    read = 0
    for chunk in chunks:
        digest.update(chunk)
        read += len(chunk)
    return digest.hexdigest(), read


class LocalFS:
    """The local filesystem."""

    sep = os.sep

    def resolve(self, path: str) -> str:
        return os.path.realpath(os.path.expanduser(path))

    def stat(self, path: str) -> Stat | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return Stat(st.st_size, st.st_mtime_ns, os.path.isdir(path))

    def join(self, folder: str, name: str) -> str:
        return os.path.join(folder, name)

    def list(self, folder: str) -> list[str]:
        return sorted(os.listdir(folder))

    def glob(self, pattern: str) -> list[str]:
        return sorted(glob.glob(os.path.expanduser(pattern)))

    def walk(self, top: str):
        """``os.walk`` (no symlinked folders followed); prune by editing ``dirs`` in place."""

        def error(err: OSError) -> None:
            log.warning("cannot list %s: %s (skipped)", shown(err.filename), err.strerror or err)

        yield from os.walk(top, onerror=error)

    def sha256(self, path: str) -> tuple[str, int]:
        """(SHA-256 hex digest, bytes read) of the content, read in chunks (never held in memory)."""
        with open(path, "rb") as handle:
            return sha256_chunks(iter(lambda: handle.read(CHUNK), b""))

    def writing(self, path: str) -> bool:
        """Whether the file is still open for writing: a local filesystem cannot tell."""
        return False

    @contextmanager
    def local(self, path: str):
        """A local path holding the file's bytes: the file itself."""
        yield path


class HdfsFS:
    """HDFS through WebHDFS (kmeans_ops.hdfs.Hdfs: retries, atomic writes, errors naming the path).

    Takes and returns ``hdfs://`` URIs; the part before the path (``hdfs://host:port``) is kept as
    given so that results read like their inputs.
    """

    sep = "/"

    def __init__(self, hdfs=None):
        self._hdfs = hdfs

    @property
    def hdfs(self):
        if self._hdfs is None:
            from .hdfs import Hdfs

            self._hdfs = Hdfs()
        return self._hdfs

    @staticmethod
    def split(uri: str) -> tuple[str, str]:
        """``hdfs://host:port/a/b`` -> (``hdfs://host:port``, ``/a/b``)."""
        parts = urlsplit(uri)
        return f"hdfs://{parts.netloc}", parts.path or "/"

    def resolve(self, uri: str) -> str:
        prefix, path = self.split(uri)
        normal = posixpath.normpath(path)
        return prefix + ("/" + normal.lstrip("/"))

    def path(self, uri: str) -> str:
        return self.split(self.resolve(uri))[1]

    def stat(self, uri: str) -> Stat | None:
        path = self.path(uri)
        status = self.hdfs.call("status", path, lambda: self.hdfs.client.status(path, strict=False))
        if status is None:
            return None
        return Stat(int(status["length"]), int(status["modificationTime"]) * 1_000_000, status["type"] == "DIRECTORY")

    def join(self, folder: str, name: str) -> str:
        return folder.rstrip("/") + "/" + name

    def list(self, folder: str) -> list[str]:
        return sorted(self.hdfs.list(self.path(folder)))

    def glob(self, pattern: str) -> list[str]:
        folder, name = posixpath.split(pattern)
        if is_glob(folder):
            raise InputError(pattern, "HDFS patterns may hold wildcards in the file name only")
        if self.stat(folder) is None:
            return []
        return [self.join(folder, n) for n in self.list(folder) if fnmatch.fnmatch(n, name)]

    def walk(self, top: str):
        prefix, path = self.split(self.resolve(top))
        walked = self.hdfs.call("walk", path, lambda: self.hdfs.client.walk(path, allow_dir_changes=True))
        for folder, dirs, names in walked:
            yield prefix + folder, dirs, names

    def sha256(self, uri: str) -> tuple[str, int]:
        """(SHA-256 hex digest, bytes read), streamed in chunks (a retried read starts again)."""
        path = self.path(uri)

        def read():
            with self.hdfs.client.read(path, chunk_size=CHUNK) as reader:
                return sha256_chunks(reader)

        return self.hdfs.call("read", path, read)

    def writing(self, uri: str) -> bool:
        """Whether the NameNode still has the file open for writing ("under construction"). Only
        WebHDFS's GET_BLOCK_LOCATIONS says so (GETFILESTATUS does not), and the hdfs client has no
        method for it: it is built from the client's own request helper (``hdfs.client._Request``,
        hdfs 2.7), so authentication and NameNode fail-over are the client's."""
        from hdfs.client import _Request

        path = self.path(uri)
        located = self.hdfs.call("block locations", path, _Request("GET").to_method("GET_BLOCK_LOCATIONS"),
                                 self.hdfs.client, path)
        return bool(located.json()["LocatedBlocks"]["isUnderConstruction"])

    @contextmanager
    def local(self, uri: str):
        """A temporary local copy of the file, removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="kmeans-hdfs-") as tmp:
            local = os.path.join(tmp, posixpath.basename(self.path(uri)) or "file")
            self.hdfs.download(self.path(uri), local)
            yield local


_LOCAL = LocalFS()


def filesystem(path: str) -> LocalFS | HdfsFS:
    """The filesystem a path is on: the one place that chooses by URI."""
    return HdfsFS() if is_hdfs(path) else _LOCAL


def resolve(path: str) -> str:
    return filesystem(path).resolve(path)


def _is_file(fs, path: str) -> bool:
    st = fs.stat(path)
    return st is not None and not st.is_dir


def expand(inputs: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """Files, folders and glob patterns (local or ``hdfs://``) -> the image paths they name.

    A folder gives its files ending in one of ``extensions`` (case-insensitive; not recursive); a
    file named explicitly is always taken; a pattern gives its matching files. A path that does not
    exist, or a pattern that matches nothing, raises InputError. A file named twice (also through a
    symlink) is listed once, in input order.
    """
    found: list[str] = []
    for given in inputs:
        fs = filesystem(given)
        item = os.path.expanduser(given) if fs is _LOCAL else given
        st = fs.stat(item)
        if st is None and is_glob(item):
            matches = [m for m in fs.glob(item) if _is_file(fs, m)]
            if not matches:
                raise InputError(given, "the pattern matches no file")
            found += matches
        elif st is None:
            raise InputError(given, "no such file or folder")
        elif not st.is_dir:
            found.append(item)
        else:
            found += [fs.join(item, name) for name in fs.list(item)
                      if name.lower().endswith(extensions) and _is_file(fs, fs.join(item, name))]
    seen: set[str] = set()
    unique = []
    for path in found:
        real = resolve(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


class AllowedRoots:
    """The folders DAG params may name (see the module docstring)."""

    def __init__(self, roots: list[str], source: str):
        self.roots = [resolve(r) for r in roots]
        self.source = source

    @classmethod
    def from_settings(cls) -> AllowedRoots:
        from .settings import allowed_roots

        return cls(*allowed_roots())

    def contains(self, path: str) -> bool:
        """Whether ``path`` (local or hdfs://) resolves to a root or below one."""
        return within(path, self.roots)

    def rule(self) -> str:
        return f"allowed roots ({self.source}): {', '.join(self.roots) or 'none'}"

    def check(self, param: str, path: str) -> str:
        """``path`` resolved, or PathNotAllowed naming ``param`` and the rule."""
        target = path
        if is_glob(path):  # a pattern: the folder before its first wildcard must be inside
            head = path[: min(path.index(c) for c in GLOB_CHARS if c in path)]
            target = head if head.endswith(("/", os.sep)) else (posixpath.dirname(head) if is_hdfs(head)
                                                                 else os.path.dirname(head))
            target = target or "/"
        if not self.contains(target):
            raise PathNotAllowed(f"{param}: {shown(path)} is outside the {self.rule()}; "
                                 f"nothing was read or written")
        return resolve(path)
