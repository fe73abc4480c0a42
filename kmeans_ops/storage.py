"""Local files written atomically: write to a temporary name in the same folder, then rename.

A reader never sees half a file, and a failure leaves the previous version (or nothing) in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, else removed."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Keep the extension last: encoders (OpenCV) choose the format by it.
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
