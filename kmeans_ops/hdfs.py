"""HDFS storage through the Airflow HDFS provider's WebHDFSHook (connection ``webhdfs_default``).

Every write is atomic (a temporary name, then a rename), transient errors (connection refused or
reset, timeouts, HTTP 5xx, a DataNode that went away) are retried with backoff (4 times, 1 s
doubling; ``KMEANS_HDFS_RETRIES`` sets how many), and a persistent
error raises :class:`HdfsError` naming the path and the NameNode.

Outside Airflow (the CLI), the connection comes from ``AIRFLOW_CONN_WEBHDFS_DEFAULT``; when it is
not set and ``bin/hadoop-dev up`` has run, the dev cluster's WebHDFS (127.0.0.1:9870) is used.
"""

from __future__ import annotations

import getpass
import logging
import os
import posixpath
import re
import time
import uuid

from .errors import shown

logging.getLogger("hdfs").setLevel(logging.WARNING)

CONN_ID = "webhdfs_default"
#: A URL's query string (``?op=OPEN&user.name=bob&delegation=...``), in a URL with or without its
#: scheme and host (requests quotes ``url: /webhdfs/v1/x?op=...``): up to a blank, quote or bracket.
_QUERY = re.compile(r"\?[^\s'\"<>()\[\]]*=[^\s'\"<>()\[\]]*")


#: Bytes of HDFS files this process has read (read_bytes, download), for the task log's figure of
#: how much data passed through the worker (kmeans_plugin.operators) and the benchmarks.
BYTES_READ = [0]


class HdfsError(RuntimeError):
    """An HDFS operation failed for good; the message names the path and the NameNode."""


def _default_connection() -> None:
    """Point webhdfs_default at the dev cluster when nothing else configures it."""
    from .settings import webhdfs_dev_connection

    dev = webhdfs_dev_connection()
    if dev:
        os.environ["AIRFLOW_CONN_WEBHDFS_DEFAULT"] = dev


def without_queries(text: str) -> str:
    """``text`` (an error of WebHDFS, requests or urllib3) on one printable line, every URL's query
    string removed: WebHDFS puts ``user.name=`` and ``delegation=`` (a token) in its URLs."""
    return shown(_QUERY.sub("", text))


def _transient(err: BaseException) -> bool:
    import requests
    from hdfs.util import HdfsError as ClientError

    if isinstance(err, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(err, ClientError):
        text = str(err)
        return any(word in text for word in ("RetriableException", "SafeModeException", "Connection refused",
                                             "could only be written to 0", "NotReplicatedYet", "503", "500"))
    return False


class Hdfs:
    """The few HDFS operations the pipeline needs, over one WebHDFS client."""

    def __init__(self, conn_id: str = CONN_ID, retries: int | None = None, backoff: float = 1.0):
        from .settings import hdfs_retries, node_webhdfs

        self.retries = hdfs_retries() if retries is None else retries
        self.backoff = backoff
        self._client = None
        self.hook = None
        # A Hadoop task on a node (kmeans_ops.streaming): no Airflow there, the job names the WebHDFS.
        self._node = node_webhdfs()
        if self._node is None:
            _default_connection()
            from airflow.providers.apache.hdfs.hooks.webhdfs import WebHDFSHook

            self.hook = WebHDFSHook(webhdfs_conn_id=conn_id)

    @property
    def client(self):
        if self._client is None:
            if self._node is not None:
                from hdfs import InsecureClient

                self._client = InsecureClient(self._node[0], user=self._node[1])
            else:
                self._client = self.call("connect", "/", self.hook.get_conn)
        return self._client

    def node_env(self) -> dict[str, str]:
        """What a Hadoop task needs to reach this HDFS without Airflow (settings.node_webhdfs)."""
        return {"KMEANS_WEBHDFS_URL": self.client.url, "KMEANS_WEBHDFS_USER": self.user()}

    def user(self) -> str:
        if self._node is not None:
            return self._node[1]
        return self.hook.get_connection(self.hook.webhdfs_conn_id).login or getpass.getuser()

    @property
    def namenode(self) -> str:
        """The NameNode's WebHDFS address, for error messages."""
        if self._client is not None:
            return self._client.url
        if self._node is not None:
            return self._node[0]
        try:
            conn = self.hook.get_connection(self.hook.webhdfs_conn_id)
            return f"NameNode {conn.host}:{conn.port} (connection {self.hook.webhdfs_conn_id})"
        except Exception:  # noqa: BLE001 - the connection itself is missing
            return f"the NameNode of connection {self.hook.webhdfs_conn_id}"

    def call(self, what: str, path: str, fn, *args, **kwargs):
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - classified below
                if attempt < self.retries and _transient(err):
                    logging.getLogger(__name__).warning("HDFS %s %s failed (%s); retrying", what, shown(path),
                                                        without_queries(str(err)))
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise HdfsError(f"HDFS {what} {shown(path)} on {without_queries(self.namenode)} failed: "
                                f"{without_queries(str(err))}") from err

    # ------------------------------------------------------------ reads
    def exists(self, path: str) -> bool:
        return self.call("status", path, self.client.status, path, strict=False) is not None

    def list(self, path: str) -> list[str]:
        return self.call("list", path, self.client.list, path)

    def read_bytes(self, path: str) -> bytes:
        def read():
            with self.client.read(path) as reader:
                return reader.read()

        data = self.call("read", path, read)
        BYTES_READ[0] += len(data)
        return data

    def checksum(self, path: str) -> dict:
        """The file checksum the NameNode has the DataNodes compute (WebHDFS GETFILECHECKSUM):
        ``{"algorithm", "bytes" (hex), "length"}``; no byte of the file is sent here."""
        return self.call("checksum", path, self.client.checksum, path)

    def download(self, path: str, local: str) -> None:
        self.call("download", path, self.client.download, path, local, overwrite=True, n_threads=1)
        BYTES_READ[0] += sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(local)
                             for name in names) if os.path.isdir(local) else os.path.getsize(local)

    # ------------------------------------------------------------ writes (atomic)
    def _tmp(self, path: str) -> str:
        folder, name = posixpath.split(path)
        return posixpath.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")

    def _replace(self, tmp: str, path: str) -> None:
        """Rename ``tmp`` to ``path``, replacing it (WebHDFS renames do not overwrite)."""
        if self.exists(path):
            self.delete(path)
        self.call("rename", path, self.client.rename, tmp, path)

    def _discard_tmp(self, tmp: str) -> None:
        """Best effort: remove a temporary left by a failed write (HDFS may be the thing failing)."""
        try:
            self.client.delete(tmp, recursive=True)
        except Exception:  # noqa: BLE001
            logging.getLogger(__name__).warning("could not remove %s on %s", shown(tmp), without_queries(self.namenode))

    def write_bytes(self, path: str, data: bytes) -> None:
        tmp = self._tmp(path)
        try:
            self.call("write", path, self.client.write, tmp, data=data, overwrite=True)
        except HdfsError:
            self._discard_tmp(tmp)
            raise
        self._replace(tmp, path)

    def upload_dir(self, local: str, path: str) -> None:
        """Upload a local folder to ``path`` (replaced as a whole)."""
        tmp = self._tmp(path)
        self.makedirs(posixpath.dirname(path) or "/")
        try:
            self.call("upload", path, self.client.upload, tmp, local, overwrite=True, n_threads=1)
        except HdfsError:
            self._discard_tmp(tmp)
            raise
        self._replace(tmp, path)

    def makedirs(self, path: str) -> None:
        self.call("mkdir", path, self.client.makedirs, path)

    def delete(self, path: str) -> None:
        self.call("delete", path, self.client.delete, path, recursive=True)

    def home(self) -> str:
        return f"/user/{self.user()}"

