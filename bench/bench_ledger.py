"""Benchmark of the nightly scan of an HDFS landing root: content keys by SHA-256 streamed through
WebHDFS (before issue 13) against the HDFS file checksum (WebHDFS GETFILECHECKSUM, now). Prints
figures; README records them. Needs the dev cluster's HDFS (``bin/hadoop-dev up``); never starts it.

1,000 landed files (``--files``) of ``--kb`` kB each on average (random bytes; the scan does not
decode them, only their size matters), in 10 folders, are uploaded under a fresh folder of the
user's HDFS home, scanned with ``kmeans_ops.ledger.scan`` (settle_seconds 0) both ways, then
removed. "Before" is the same scan with ``HdfsFS.content_key`` replaced by the old one (the
SHA-256 of the bytes read through WebHDFS, ``HdfsFS.sha256``); everything else (listing, the two
stat calls, the under-construction check) is the same code. For each: seconds (wall clock),
``/proc/self/io`` rchar (bytes the process read with read(2): files, pipes) and the bytes the
process received on its sockets (socket.recv / recv_into counted: the kernel does not put recv(2)
in rchar, and WebHDFS's bytes arrive that way), and the ratios before / after.

Usage: HADOOP_DEV_DIR=.hadoop-dev .venv/bin/python bench/bench_ledger.py [--files 1000] [--kb 200]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kmeans_ops import ledger as L  # noqa: E402
from kmeans_ops.hdfs import Hdfs  # noqa: E402
from kmeans_ops.paths import SHA256_KEY, HdfsFS  # noqa: E402


def rchar() -> int:
    with open("/proc/self/io") as handle:
        return int(next(line for line in handle if line.startswith("rchar:")).split()[1])


class Received:
    """Bytes received on this process's sockets while in use (socket.socket.recv/recv_into)."""

    def __enter__(self):
        self.bytes, self._saved = 0, (socket.socket.recv, socket.socket.recv_into)
        recv, recv_into = self._saved

        def counted_recv(sock, *args):
            data = recv(sock, *args)
            self.bytes += len(data)
            return data

        def counted_recv_into(sock, *args):
            n = recv_into(sock, *args)
            self.bytes += n
            return n

        socket.socket.recv, socket.socket.recv_into = counted_recv, counted_recv_into
        return self

    def __exit__(self, *exc):
        socket.socket.recv, socket.socket.recv_into = self._saved


def old_content_key(self, uri: str):
    """The key before issue 13: the SHA-256 of every byte, read through WebHDFS."""
    digest, read = self.sha256(uri)
    return SHA256_KEY + digest, read


def measure(uri: str, files: int) -> dict:
    before_rchar = rchar()
    with Received() as got:
        start = time.perf_counter()
        found = L.scan([uri], settle_seconds=0)
        seconds = time.perf_counter() - start
    assert len(found) == files, (len(found), files)
    return {"seconds": seconds, "rchar": rchar() - before_rchar, "socket": got.bytes,
            "kind": found[0]["digest"].split(":")[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--kb", type=int, default=200, help="average file size in kB (sizes spread +-50%%)")
    args = parser.parse_args()

    client = Hdfs()
    base = f"{client.home()}/bench-ledger-{uuid.uuid4().hex[:8]}"
    uri = f"hdfs://127.0.0.1:8020{base}"
    rng = random.Random(13)
    sizes = [rng.randint(args.kb * 512, args.kb * 1536) for _ in range(args.files)]
    total = sum(sizes)
    print(f"uploading {args.files} files, {total / 1e6:.1f} MB, to {uri} ...", flush=True)
    start = time.perf_counter()

    def put(i: int) -> None:
        client.call("write", base, client.client.write, f"{base}/day{i % 10}/img-{i:04d}.jpg",
                    data=os.urandom(sizes[i]), overwrite=True)

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, range(args.files)))
        print(f"uploaded in {time.perf_counter() - start:.0f} s", flush=True)

        new = HdfsFS.content_key
        results = {}
        for label in ("before", "after", "before", "after"):  # twice each, interleaved: the best is kept
            HdfsFS.content_key = old_content_key if label == "before" else new
            try:
                got = measure(uri, args.files)
            finally:
                HdfsFS.content_key = new
            print(f"  {label:6s} key {got['kind']:32s} {got['seconds']:7.2f} s  rchar {got['rchar'] / 1e3:8.1f} kB  "
                  f"socket {got['socket'] / 1e6:9.3f} MB", flush=True)
            if label not in results or got["seconds"] < results[label]["seconds"]:
                results[label] = got
        b, a = results["before"], results["after"]
        print(f"\nscan of {args.files} landed files ({total / 1e6:.1f} MB) on HDFS, best of 2:")
        print(f"  before (SHA-256 through WebHDFS): {b['seconds']:.2f} s, received {b['socket'] / 1e6:.1f} MB "
              f"({b['socket'] / total:.2f} x the files' bytes), rchar {b['rchar'] / 1e3:.1f} kB")
        print(f"  after  (HDFS file checksum):      {a['seconds']:.2f} s, received {a['socket'] / 1e6:.2f} MB "
              f"({a['socket'] / args.files:.0f} bytes per file), rchar {a['rchar'] / 1e3:.1f} kB")
        print(f"  ratio before/after: {b['seconds'] / a['seconds']:.1f} x the time, "
              f"{b['socket'] / a['socket']:.0f} x the bytes received, "
              f"{b['rchar'] / max(a['rchar'], 1):.1f} x rchar")
    finally:
        client.delete(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
