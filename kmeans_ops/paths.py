"""Every user path goes through here: which filesystem it is on, how it is resolved, and whether a
DAG param may name it.

- **One choice by URI** (as mrjob's composite filesystem): :func:`filesystem` returns
  :class:`LocalFS` for a local path and :class:`HdfsFS` for an ``hdfs://`` URI (through WebHDFS,
  kmeans_ops.hdfs). Both offer the same few operations (stat, list, glob, walk, read in chunks, a
  content key, a local copy to decode; and for publication: exists, read and write whole files,
  the latter atomically, rename, delete, a local working copy of a folder), so ingest,
  reconstruction, input expansion, the nightly scan, publication and the results app are written
  once, with no branch on the scheme.
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

import errno
import fnmatch
import hashlib
import logging
import os
import posixpath
import re
import shutil
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
#: Linux's PATH_MAX and NAME_MAX (bytes): a longer path param is refused before it reaches the OS.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


class StillBeingWritten(OSError):
    """The file is still open for writing, so it has no content key yet (HDFS: "under construction")."""


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


#: The kind prefix of a content key computed by reading the bytes (LocalFS.content_key).
SHA256_KEY = "sha256:"
#: ``hdfs-<algorithm>:<checksum hex>``, the key HdfsFS.content_key makes from the NameNode's answer.
_HDFS_ALGORITHM = re.compile(r"[A-Za-z0-9-]{1,64}")
_HEX = re.compile(r"[0-9a-fA-F]{1,256}")


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
    #: It has symlinks: ``<output>/latest`` is one (kmeans_ops.publish).
    symlinks = True

    def resolve(self, path: str) -> str:
        return os.path.realpath(os.path.expanduser(path))

    def absolute(self, path: str) -> str:
        """The path made absolute, symlinks kept (what a rename acts on)."""
        return os.path.abspath(path)

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

    def walk(self, top: str):
        """``os.walk`` (no symlinked folders followed); prune by editing ``dirs`` in place."""

        def error(err: OSError) -> None:
            log.warning("cannot list %s: %s (skipped)", shown(err.filename), err.strerror or err)

        yield from os.walk(top, onerror=error)

    def sha256(self, path: str) -> tuple[str, int]:
        """(SHA-256 hex digest, bytes read) of the content, read in chunks (never held in memory)."""
        return sha256_chunks(self.reader(path))

    def reader(self, path: str):
        """The file's bytes in chunks; the file is opened now (an error is raised here, not while
        iterating) and closed at the end."""
        handle = open(path, "rb")

        def chunks():
            with handle:
                yield from iter(lambda: handle.read(CHUNK), b"")

        return chunks()

    # ------------------------------------------------------------ whole files and folders (publication)
    def exists(self, path: str) -> bool:
        """Whether anything has that name (a dangling symlink too)."""
        return os.path.lexists(path)

    def is_folder(self, path: str) -> bool:
        """A folder itself, not a symlink to one."""
        return os.path.isdir(path) and not os.path.islink(path)

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Written atomically (a temporary name, then a rename): a reader sees the old or the new file."""
        from .storage import write_bytes

        write_bytes(path, data)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def exchange(self, a: str, b: str) -> bool:
        """Swap two folders in one step when the system can (storage.exchange); False otherwise."""
        from .storage import exchange

        return exchange(a, b)

    def delete(self, path: str) -> None:
        """Remove a folder and what it holds (best effort), or a file or symlink."""
        if self.is_folder(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)

    @contextmanager
    def working_copy(self, folder: str, fetch=()):
        """A local folder standing for ``folder``, to write files into with local code: the folder
        itself (``fetch``, the names a writer wants to read there, are already there)."""
        yield folder

    def content_key(self, path: str) -> tuple[str, int | None]:
        """(content key, bytes read): ``sha256:<hex digest>`` of the bytes, read in chunks. Same
        bytes, same key; the ledger of the nightly scan is keyed by it."""
        digest, read = self.sha256(path)
        return SHA256_KEY + digest, read

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
    #: HDFS symlinks are disabled by default: ``<output>/latest`` is a small file (kmeans_ops.publish).
    symlinks = False

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

    def absolute(self, uri: str) -> str:
        return self.resolve(uri)

    def path(self, uri: str) -> str:
        return self.split(self.resolve(uri))[1]

    def _status(self, uri: str) -> dict | None:
        path = self.path(uri)
        return self.hdfs.call("status", path, lambda: self.hdfs.client.status(path, strict=False))

    def stat(self, uri: str) -> Stat | None:
        status = self._status(uri)
        if status is None:
            return None
        return Stat(int(status["length"]), int(status["modificationTime"]) * 1_000_000, status["type"] == "DIRECTORY")

    def join(self, folder: str, name: str) -> str:
        return folder.rstrip("/") + "/" + name

    def list(self, folder: str) -> list[str]:
        return sorted(self.hdfs.list(self.path(folder)))

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

        from .hdfs import BYTES_READ

        digest, read_bytes = self.hdfs.call("read", path, read)
        BYTES_READ[0] += read_bytes
        return digest, read_bytes

    def content_key(self, uri: str) -> tuple[str, int | None]:
        """(content key, None: no byte of the file is read here): the file checksum HDFS keeps,
        WebHDFS GETFILECHECKSUM, as ``hdfs-<algorithm>:<checksum hex>``.

        The DataNodes combine the CRCs they already store for each chunk; only the checksum (28
        bytes) reaches this process. What the key depends on is in the algorithm's name, so keys of
        different kinds never compare equal: Hadoop 3.5's WebHDFS always answers
        ``MD5-of-<n>MD5-of-<b>CRC32C`` (the DataNode's WebHdfsHandler calls DFSClient.getFileChecksum,
        which is hard-wired to MD5MD5CRC whatever ``dfs.checksum.combine.mode`` says): an MD5 of the
        per-block MD5s of the CRC32C of every ``b``-byte chunk, ``n`` the chunks per block. A file
        smaller than its block size (every image with HDFS's 128 MB default) has ``n`` = 0 and a key
        that depends only on its bytes, ``b`` and the CRC type; a file of several blocks also on its
        block size (two copies written with different block sizes have different keys: processed
        again, never wrongly skipped). A COMPOSITE-CRC answer (32 bits, for servers that honour the
        setting, e.g. HttpFS) gets the file's length appended (``...:<crc>:<length>``).
        A file still being written has no checksum: StillBeingWritten."""
        from .hdfs import HdfsError

        path = self.path(uri)
        try:
            checksum = self.hdfs.checksum(path)
        except HdfsError as err:
            if "is under construction" in str(err):
                raise StillBeingWritten(errno.EBUSY, "still open for writing", uri) from None
            raise
        algorithm, value = str(checksum.get("algorithm", "")), str(checksum.get("bytes", ""))
        if not _HDFS_ALGORITHM.fullmatch(algorithm) or not _HEX.fullmatch(value):
            raise HdfsError(f"HDFS checksum {shown(path)}: unexpected answer (algorithm {shown(algorithm[:80])}, "
                            f"{len(value)} characters)")
        key = f"hdfs-{algorithm.lower()}:{value.lower()}"
        if algorithm.upper().startswith("COMPOSITE-"):
            st = self.stat(uri)
            key += f":{st.size if st else 0}"
        return key, None

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

    def reader(self, uri: str):
        """The file's bytes in chunks, streamed from its DataNode; the file is opened now (with the
        client's retries; an error is raised here, not while iterating)."""
        path = self.path(uri)

        def open_file():
            opened = self.hdfs.client.read(path, chunk_size=CHUNK)
            return opened, opened.__enter__()

        opened, chunks = self.hdfs.call("read", path, open_file)

        def stream():
            from .hdfs import BYTES_READ

            try:
                for chunk in chunks:
                    BYTES_READ[0] += len(chunk)
                    yield chunk
            finally:
                opened.__exit__(None, None, None)

        return stream()

    # ------------------------------------------------------------ whole files and folders (publication)
    def exists(self, uri: str) -> bool:
        return self._status(uri) is not None

    def is_folder(self, uri: str) -> bool:
        status = self._status(uri)
        return status is not None and status["type"] == "DIRECTORY"

    def is_file(self, uri: str) -> bool:
        status = self._status(uri)
        return status is not None and status["type"] == "FILE"

    def read_bytes(self, uri: str) -> bytes:
        return self.hdfs.read_bytes(self.path(uri))

    def _rename2(self, src: str, dst: str, option: str) -> None:
        """WebHDFS RENAME with ``renameoptions`` (the NameNode's rename2): ``NONE`` fails when
        ``dst`` exists (never moves ``src`` into a folder ``dst``, as a plain WebHDFS rename
        would); ``OVERWRITE`` replaces a file ``dst`` in the same atomic step. The hdfs client's
        own rename sends no options, so this is its request helper (``client._rename``, hdfs 2.7)."""
        self.hdfs.call("rename", src, self.hdfs.client._rename, src, destination=dst, renameoptions=option)

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, which must not exist (HDFS renames a folder atomically)."""
        self._rename2(self.path(src), self.path(dst), "NONE")

    def exchange(self, a: str, b: str) -> bool:
        """HDFS cannot swap two folders in one step."""
        return False

    def _write_atomically(self, uri: str, write) -> None:
        """``write(tmp)`` writes the file at the temporary path ``tmp`` beside it, which then
        replaces ``uri`` in one rename: a reader sees the old file or the new one, never none."""
        from .hdfs import HdfsError

        path = self.path(uri)
        tmp = self.hdfs._tmp(path)
        try:
            self.hdfs.call("write", path, write, tmp)
            self._rename2(tmp, path, "OVERWRITE")
        except HdfsError:
            self.hdfs._discard_tmp(tmp)
            raise

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Written atomically (see _write_atomically)."""
        self._write_atomically(uri, lambda tmp: self.hdfs.client.write(tmp, data=data, overwrite=True))

    def upload(self, local: str, uri: str) -> None:
        """A local file's copy at ``uri``, written atomically (see _write_atomically)."""
        self._write_atomically(uri, lambda tmp: self.hdfs.client.upload(tmp, local, overwrite=True, n_threads=1))

    def makedirs(self, uri: str) -> None:
        self.hdfs.makedirs(self.path(uri))

    def delete(self, uri: str) -> None:
        self.hdfs.delete(self.path(uri))

    @contextmanager
    def working_copy(self, folder: str, fetch=()):
        """A local temporary folder standing for the HDFS ``folder``, to write files into with
        local code (OpenCV, the report): the files named in ``fetch`` that ``folder`` holds are
        downloaded into it first; on success every other file written into it is uploaded into
        ``folder`` (each atomically), then the local folder is removed."""
        with tempfile.TemporaryDirectory(prefix="kmeans-hdfs-") as tmp:
            fetched = set()
            for name in fetch:
                if self.is_file(self.join(folder, name)):
                    self.hdfs.download(self.path(self.join(folder, name)), os.path.join(tmp, name))
                    fetched.add(name)
            yield tmp
            for name in sorted(os.listdir(tmp)):
                if name not in fetched and os.path.isfile(os.path.join(tmp, name)):
                    self.upload(os.path.join(tmp, name), self.join(folder, name))


_LOCAL = LocalFS()


def filesystem(path: str) -> LocalFS | HdfsFS:
    """The filesystem a path is on: the one place that chooses by URI."""
    return HdfsFS() if is_hdfs(path) else _LOCAL


def resolve(path: str) -> str:
    return filesystem(path).resolve(path)


#: ``scheme:/`` at the start of a path: a URI (``hdfs://``, ``s3://``, ``file:///``), not a local name.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


def scheme(path: str) -> str | None:
    """The filesystem a path names by its URI scheme (lower case: ``hdfs``, ``s3``, ``file``, ...),
    or None for a plain local path."""
    found = _SCHEME.match(path)
    return found.group(1).lower() if found else None


def check_scheme(param: str, path: str, supported: tuple[str | None, ...] = (None, "hdfs")) -> None:
    """ParamError naming ``param`` unless ``path`` is on a filesystem of ``supported`` (None: local).

    A path whose scheme the code does not read or write is refused, never reinterpreted (a local
    folder literally named ``hdfs:`` is not what a user meant by ``hdfs://...``)."""
    found = scheme(path)
    if found in supported and (found != "hdfs" or is_hdfs(path)):
        return
    what = "a local path" if supported == (None,) else "a local path or an hdfs:// URL"
    if found is None:
        raise ParamError(f"{param}: {shown(path)} is not supported here; give {what}")
    raise ParamError(f"{param}: {shown(path)} names the filesystem '{shown(found)}', which is not supported "
                     f"for {param}; give {what}")


def _safe(param: str, path: str, action):
    """``action()``, with the errors a hostile or broken path raises (a NUL byte, a name or path too
    long, a symlink loop, permission denied) turned into one ParamError naming ``param``."""
    try:
        return action()
    except ValueError:  # "embedded null byte"
        raise ParamError(f"{param}: {shown(path)} is not a usable path (it holds a NUL character)") from None
    except OSError as err:
        raise ParamError(f"{param}: {shown(path)} is not a usable path ({err.strerror or type(err).__name__})") from None


def _split_pattern(pattern: str, sep: str) -> tuple[str, list[str]]:
    """A pattern's literal folder (the components before the first one holding a wildcard) and its
    remaining components. ``..`` or ``.`` after a wildcard is refused: resolved before expansion, it
    would cancel the wildcard's folder (``<root>/*/../../etc`` is ``<root>/../etc``)."""
    parts = pattern.split(sep)
    first = next(i for i, part in enumerate(parts) if is_glob(part))
    head, tail = sep.join(parts[:first]), [p for p in parts[first:] if p != ""]
    if any(part in ("..", ".") for part in tail):
        raise InputError(pattern, "a pattern may not hold '..' or '.' after a wildcard")
    if not head:
        head = sep if pattern.startswith(sep) else "."
    elif is_hdfs(pattern) and HdfsFS.split(head)[1] in ("", "/"):  # hdfs://host or hdfs:// itself
        head = HdfsFS.split(head)[0] + "/"
    return head, tail


def _matches(fs, folder: str, part: str) -> list[str]:
    """The names in ``folder`` that the pattern component ``part`` matches (case-sensitive, as
    glob on POSIX; a leading dot is matched only by a pattern that starts with one, as glob does)."""
    if not is_glob(part):
        return [part]
    try:
        names = fs.list(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    hidden = part.startswith(".")
    return [n for n in names if fnmatch.fnmatchcase(n, part) and (hidden or not n.startswith("."))]


def _usable(fs, path: str) -> Stat | None:
    """``fs.stat(path)``, or None (with a log line) for an entry that cannot be used: a symlink
    loop, a name too long, an unreadable entry."""
    try:
        return fs.stat(path)
    except (OSError, ValueError) as err:
        log.warning("%s cannot be used (%s): skipped", shown(path), getattr(err, "strerror", None) or err)
        return None


class _Expander:
    """Turns input items into image paths, checking every path it is about to use.

    ``allowed(param, path)`` (AllowedRoots.check, or None for the CLI: no check) is called on a path
    before it is listed, stat'ed or returned, so nothing outside the allowed roots is touched: a
    folder symlink pointing outside is refused before it is listed, a file symlink before it is read.
    """

    def __init__(self, extensions: tuple[str, ...], allowed=None, param: str = "input"):
        self.extensions = extensions
        self.allowed = allowed
        self.param = param

    def check(self, path: str) -> None:
        if self.allowed is not None:
            self.allowed(self.param, path)

    def stat(self, fs, path: str) -> Stat | None:
        return _safe(self.param, path, lambda: fs.stat(path))

    def folder(self, fs, folder: str) -> list[str]:
        """The image files of a folder (not recursive). An entry that cannot be used (a symlink
        loop, a dangling link, an unreadable entry) is skipped with a log line, so one bad entry in
        a shared folder does not fail every run naming it."""
        found = []
        for name in _safe(self.param, folder, lambda: fs.list(folder)):
            path = fs.join(folder, name)
            if not name.lower().endswith(self.extensions):
                continue
            self.check(path)
            st = _usable(fs, path)
            if st is not None and not st.is_dir:
                found.append(path)
        return found

    def pattern(self, fs, pattern: str) -> list[str]:
        """Expand a pattern one component at a time from its literal folder, checking each folder
        before listing it and each match before it is used."""
        head, tail = _split_pattern(pattern, fs.sep)
        self.check(head)
        st = self.stat(fs, head)
        current = [head] if st is not None and st.is_dir else []
        for depth, part in enumerate(tail):
            last = depth == len(tail) - 1
            following = []
            for folder in current:
                for name in _safe(self.param, folder, lambda: _matches(fs, folder, part)):
                    path = fs.join(folder, name) if folder != "." else name
                    self.check(path)
                    st = _usable(fs, path)
                    if st is not None and st.is_dir != last:
                        following.append(path)
            current = following
        return current

    def items(self, inputs: list[str]) -> list[str]:
        found: list[str] = []
        for given in inputs:
            fs = filesystem(given)
            item = os.path.expanduser(given) if fs is _LOCAL else given
            literal = not is_glob(item) or self.exists_literally(fs, item)
            if literal:  # a name that exists is taken literally, wildcard characters and all
                self.check(item)
                st = self.stat(fs, item)
                if st is None:
                    raise InputError(given, "no such file or folder")
                found += self.folder(fs, item) if st.is_dir else [item]
            else:
                matches = self.pattern(fs, item)
                if not matches:
                    raise InputError(given, "the pattern matches no file")
                found += matches
        return found

    def exists_literally(self, fs, item: str) -> bool:
        """Whether a name holding wildcard characters exists as it is. Asked only once its literal
        folder is allowed (the question itself must not reach outside): a folder that resolves
        outside, a symlink named ``d[1]`` pointing out included, is refused here."""
        parent = posixpath.dirname(item) if fs is not _LOCAL else os.path.dirname(item)
        self.check(parent or ".")
        try:
            return fs.stat(item) is not None
        except (OSError, ValueError):
            return False


def expand(inputs: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS, allowed=None,
           param: str = "input") -> list[str]:
    """Files, folders and glob patterns (local or ``hdfs://``) -> the image paths they name.

    A folder gives its files ending in one of ``extensions`` (case-insensitive; not recursive); a
    file named explicitly is always taken; a pattern (``*``, ``?``, ``[...]``, in any component but
    never followed by ``..``) gives its matching files. A name that exists is taken literally even
    when it holds wildcard characters. A path that does not exist, or a pattern that matches
    nothing, raises InputError. A file named twice (also through a symlink) is listed once, in
    input order.

    ``allowed`` (an AllowedRoots, for DAG params): every item, every folder a pattern lists and
    every file found is resolved and checked before it is used (PathNotAllowed naming ``param``).
    """
    check = allowed.check if allowed is not None else None
    found = _Expander(extensions, check, param).items(inputs)
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
        """``path`` resolved, or PathNotAllowed naming ``param`` and the rule.

        The path is taken literally (a wildcard character is just a character here: patterns are
        expanded by :func:`expand`, which checks every folder and match). It must be absolute (a
        relative path would depend on the worker's working folder) and on a supported filesystem;
        then its real path (``~``, ``..`` and every symlink resolved) must be a root or lie under
        one. The message is the same whether or not the path exists and never names what it
        resolves to.
        """
        check_scheme(param, path)
        expanded = path if is_hdfs(path) else _safe(param, path, lambda: os.path.expanduser(path))
        if not is_hdfs(expanded) and not os.path.isabs(expanded):
            raise ParamError(f"{param}: {shown(path)} is not an absolute path; give an absolute folder or file "
                             f"(or an hdfs:// URL) under the {self.rule()}")
        encoded = os.fsencode(expanded) if not is_hdfs(expanded) else expanded.encode("utf-8", "surrogateescape")
        if len(encoded) >= MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
            raise ParamError(f"{param}: {shown(path[:200])}{'...' if len(path) > 200 else ''} is not a usable path "
                             f"(longer than {MAX_PATH_BYTES - 1} bytes, or a name longer than {MAX_NAME_BYTES})")
        real = _safe(param, path, lambda: resolve(expanded))
        if not _safe(param, path, lambda: within(real, self.roots)):
            raise PathNotAllowed(f"{param}: {shown(path)} is outside the {self.rule()}; "
                                 f"nothing was read or written")
        return real
