"""Local files written atomically: write to a temporary name in the same folder, then rename.

A reader never sees half a file, and a failure leaves the previous version (or nothing) in place.
A full disk or quota (ENOSPC, EDQUOT) while writing raises :class:`StorageFull` naming the folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
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


def write_json(path: str, obj) -> None:
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8: escape it, JSON allows that
        data = json.dumps(obj, indent=1).encode("ascii")
    write_bytes(path, data + b"\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def publish_folder(staging: str, final: str) -> None:
    """Replace folder ``final`` by the complete folder ``staging`` with renames only.

    The old folder (if any) is moved aside first and removed after the new one is in place, so a
    reader sees either the old complete folder or the new complete one.
    """
    final = os.path.abspath(final)
    old = None
    if os.path.exists(final):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(final))
        os.rmdir(old)
        os.rename(final, old)
    os.rename(staging, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)
