"""Bytes a command reads, measured in its own process: from files (``/proc/self/io`` rchar, the
sum of read() and pread()) and from sockets (recv() and recv_into(), which rchar leaves out),
per peer port. Used by bench_cluster.py and tests/test_cluster_stages.py to show that the
submitting process of a cluster run reads (almost) none of the images.

What could carry an image's bytes is files and HDFS (WebHDFS: the NameNode and DataNodes);
the ResourceManager's REST answers that the client polls while a job runs are a few KB per
poll, grow with the run's length, not with the images, and are counted apart (``control``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Run with ``python -c``: counts, then runs ``python -m kmeans_ops`` with the remaining arguments.
MEASURED = """
import atexit, json, runpy, socket, sys
by_port = {}
def counted(method):
    def recv(self, *args, **kwargs):
        got = method(self, *args, **kwargs)
        try:
            port = self.getpeername()[1]
        except OSError:
            port = 0
        by_port[port] = by_port.get(port, 0) + (got if isinstance(got, int) else len(got))
        return got
    return recv
socket.socket.recv = counted(socket.socket.recv)
socket.socket.recv_into = counted(socket.socket.recv_into)
def report():
    rchar = int(dict(line.split(': ') for line in open('/proc/self/io').read().splitlines())['rchar'])
    print('READS', json.dumps({'files': rchar, 'sockets': by_port}), file=sys.stderr)
atexit.register(report)
sys.argv = ['kmeans_ops'] + sys.argv[1:]
runpy.run_module('kmeans_ops', run_name='__main__')
"""


@dataclass
class Reads:
    files: int  # bytes read from files (and pipes)
    sockets: dict[int, int]  # peer port -> bytes received

    @property
    def control(self) -> int:
        """Bytes from the ResourceManager (job reports and progress polled while jobs run)."""
        from urllib.parse import urlsplit

        from kmeans_ops.engines.yarn import rm_address

        return self.sockets.get(urlsplit(rm_address()).port or 80, 0)

    @property
    def data(self) -> int:
        """Everything else: files and every other socket (WebHDFS above all)."""
        return self.files + sum(self.sockets.values()) - self.control


def run_cli(*argv, env: dict | None = None, timeout: float = 900) -> tuple[int, str, Reads]:
    """``python -m kmeans_ops ARGV`` in a process of its own: (status, stderr, what it read)."""
    done = subprocess.run([sys.executable, "-c", MEASURED, *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)
    found = done.stderr.rsplit("READS ", 1)
    if len(found) < 2:
        raise RuntimeError(f"the measured process printed no count ({done.returncode}):\n{done.stderr[-3000:]}")
    counts = json.loads(found[1].splitlines()[0])
    return done.returncode, done.stderr, Reads(counts["files"], {int(p): n for p, n in counts["sockets"].items()})
