"""Local files written atomically: write to a temporary name in the same folder, then rename; and
the swap of a published folder (local or HDFS, :func:`publish_folder`).

A reader never sees half a file, and a failure leaves the previous version (or nothing) in place.
A full disk or quota (ENOSPC, EDQUOT) while writing raises :class:`StorageFull` naming the folder.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import uuid
from contextlib import contextmanager


#: errno values that mean "the filesystem (or the user's quota) has no room left".
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(OSError):
    """No space left on the device (ENOSPC) or over the quota (EDQUOT) writing into ``folder``.

    An OSError (with the original errno), so code catching OSError still sees a failed write;
    ``str()`` is one line naming the folder and never a file's content.
    """

    def __init__(self, folder: str, code: int = errno.ENOSPC):
        super().__init__(code, "no space left on device" if code == errno.ENOSPC else "disk quota exceeded", folder)
        self.folder = folder

    def __str__(self) -> str:
        return f"{self.strerror} in {self.folder}"

    def __reduce__(self):  # OSError pickles its (errno, strerror, filename): keep our signature
        return type(self), (self.folder, self.errno)


def is_full(err: BaseException) -> bool:
    """Whether ``err`` is an OSError saying the filesystem or the quota is full."""
    return isinstance(err, OSError) and err.errno in FULL_ERRNOS


@contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, else removed.

    ENOSPC or EDQUOT anywhere (creating the folder, writing, renaming) becomes StorageFull(folder).
    """
    folder, name = os.path.split(os.path.abspath(path))
    # Keep the extension last: encoders (OpenCV) choose the format by it.
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if is_full(err) and not isinstance(err, StorageFull):
            raise StorageFull(folder, err.errno) from None
        raise


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def json_bytes(obj) -> bytes:
    """``obj`` as the bytes of a JSON file (UTF-8, indented, ending in a newline)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8: escape it, JSON allows that
        data = json.dumps(obj, indent=1).encode("ascii")
    return data + b"\n"


def write_json(path: str, obj) -> None:
    write_bytes(path, json_bytes(obj))


def read_json(path: str):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


#: Prefix of a replaced run folder while it is being removed (beside the new one).
OLD_PREFIX = ".old-"


def exchange(a: str, b: str) -> bool:
    """Swap two local folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``, through the C
    library): True when done, False when this system or filesystem cannot (then nothing changed)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), a)


def old_folders(final: str, fs=None) -> list[str]:
    """The replaced copies of ``final`` still beside it (``.old-<name>-*``), on ``fs`` (a
    kmeans_ops.paths filesystem; by default the one ``final`` names)."""
    fs = fs or _filesystem(final)
    parent, name = posixpath.split(fs.absolute(final))
    try:
        return sorted(fs.join(parent, n) for n in fs.list(parent) if n.startswith(f"{OLD_PREFIX}{name}-"))
    except OSError:
        return []


def _filesystem(path: str):
    from .paths import filesystem

    return filesystem(path)


def publish_folder(staging: str, final: str) -> None:
    """Replace folder ``final`` by the complete folder ``staging``, so that at every moment (a
    ``kill -9`` included) ``final`` is either the old complete folder or the new complete one.

    Local or ``hdfs://`` (kmeans_ops.paths.filesystem chooses by ``final``). Where the filesystem
    can swap two folders in one step (Linux), the new folder and the old one are exchanged; the
    old one then takes a ``.old-<name>-*`` name and is removed. Elsewhere (HDFS: a rename of a
    folder is atomic but never replaces one) the old folder is renamed aside first: a run killed
    between the two renames is repaired by the next publication (the old folder is put back, then
    replaced). Leftover ``.old-<name>-*`` copies are removed once ``final`` is in place.
    """
    fs = _filesystem(final)
    final = fs.absolute(final)
    if not fs.exists(final):
        olds = old_folders(final, fs)
        if olds:  # killed between the renames of the fallback below: the old folder goes back first
            fs.rename(olds[-1], final)
    parent, name = posixpath.split(final)
    old = fs.join(parent, f"{OLD_PREFIX}{name}-{uuid.uuid4().hex[:12]}")
    if not fs.exists(final):
        fs.rename(staging, final)
    elif fs.exchange(staging, final):
        fs.rename(staging, old)  # the staging name now holds the old folder
    else:
        fs.rename(final, old)
        fs.rename(staging, final)
    for leftover in old_folders(final, fs):
        fs.delete(leftover)
