"""The one error type for bad input (it names the file and the problem), and ``shown``, which makes
any file name safe to put in a one-line message."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from contextlib import contextmanager

#: Lone surrogates U+DC80..U+DCFF: the bytes of a file name that are not UTF-8 (surrogateescape).
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"  # the original byte, as repr shows bytes
    return repr(ch)[1:-1]  # \n, \t, \r, \x1b, \x85, \u2028, ...


def shown(name) -> str:
    """A file name (str, bytes or path-like) as one printable line, for messages and logs.

    Printable characters are kept as they are (non-ASCII letters too, and backslashes); control
    and other non-printable characters (newline, tab, carriage return, escape, U+2028, ...) are
    escaped as ``repr`` escapes them; bytes that are not valid UTF-8 (kept by ``surrogateescape``)
    become ``\\xNN``. The result never holds a line break and always encodes to UTF-8, so printing
    or logging it cannot raise. ``shown("a\\nb.png")`` is ``a\\\\nb.png`` (a backslash and an n).
    """
    text = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


class InputError(Exception):
    """One input (image or points/clusters file) cannot be used. ``str()`` is one line:
    ``<file>: <problem>``, the file name passed through :func:`shown`.

    The problem says what is wrong and what was expected, never what the file holds.
    ``path`` keeps the name as given (for comparisons and JSON), ``problem`` the bare problem.
    """

    def __init__(self, path, problem: str):
        self.path = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
        self.problem = problem
        super().__init__(f"{shown(self.path)}: {shown(problem)}")


#: Lines native decoders print themselves (libpng's error handler, OpenCV's logger).
_NATIVE_PREFIXES = (b"libpng ", b"[ WARN:", b"[ERROR:", b"[ INFO:", b"[DEBUG:", b"[FATAL:")
_stderr_lock = threading.Lock()


def quiet_opencv() -> None:
    """Silence OpenCV's own logger (its ``[ WARN:0@...]`` lines): the project reports a bad image
    in its one-line message, and a decoder's text may quote what it read."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # an OpenCV build without the utils module
        cv2.setLogLevel(0)


@contextmanager
def native_stderr_captured():
    """While inside, what C libraries write to file descriptor 2 (libpng's ``libpng error: ...``,
    which no Python setting silences) goes to a temporary file; afterwards, lines of the known
    decoders are dropped and any other line is written to stderr after all. Serialised by a lock
    (file descriptor 2 is the process's); where it cannot be redirected, nothing changes."""
    with _stderr_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield
            return
        sink = tempfile.TemporaryFile()
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            other = [line for line in sink.read(1 << 16).splitlines() if line and not line.startswith(_NATIVE_PREFIXES)]
            sink.close()
            if other:
                os.write(2, b"\n".join(other) + b"\n")
