"""Bytes a command reads, measured in its own process: from files (``/proc/self/io`` rchar, the
sum of read() and pread()) and from sockets (recv() and recv_into(), which rchar leaves out:
WebHDFS, the ResourceManager). Used by bench_cluster.py and tests/test_cluster_stages.py to show
that the submitting process of a cluster run reads (almost) none of the images.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Run with ``python -c``: counts, then runs ``python -m kmeans_ops`` with the remaining arguments.
MEASURED = """
import atexit, runpy, socket, sys
received = [0]
def counted(method):
    def recv(self, *args, **kwargs):
        got = method(self, *args, **kwargs)
        received[0] += got if isinstance(got, int) else len(got)
        return got
    return recv
socket.socket.recv = counted(socket.socket.recv)
socket.socket.recv_into = counted(socket.socket.recv_into)
def report():
    rchar = int(dict(line.split(': ') for line in open('/proc/self/io').read().splitlines())['rchar'])
    print('READ', rchar + received[0], file=sys.stderr)
atexit.register(report)
sys.argv = ['kmeans_ops'] + sys.argv[1:]
runpy.run_module('kmeans_ops', run_name='__main__')
"""


def run_cli(*argv, env: dict | None = None, timeout: float = 900) -> tuple[int, str, int]:
    """``python -m kmeans_ops ARGV`` in a process of its own: (status, stderr, bytes it read)."""
    done = subprocess.run([sys.executable, "-c", MEASURED, *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)
    found = done.stderr.rsplit("READ ", 1)
    if len(found) < 2:
        raise RuntimeError(f"the measured process printed no count ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode, done.stderr, int(found[1].split()[0])
