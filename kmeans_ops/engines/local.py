"""The embedded engine: one iteration for a batch of images, in process, on the local filesystem.

Each image's table is mapped (by one map task, or ``tasks`` threads), the partials are combined
and reduced, exactly as a Hadoop job does with the same functions.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from .. import mapreduce
from ..formats import read_clusters, read_points, write_clusters
from ..storage import write_json
from ..workarea import WorkArea


def link_folder(source: str, target: str) -> None:
    """Make the local folder ``target`` hold the files of ``source`` (a work-area unit's folder: files,
    no subfolders) as hard links, so no byte is copied (copies where the filesystem refuses a link),
    replacing what ``target`` held. Built beside ``target`` and renamed into place."""
    import shutil
    import tempfile

    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".link-", dir=parent)
    try:
        for entry in os.scandir(source):
            if entry.is_file(follow_symlinks=False):
                try:
                    os.link(entry.path, os.path.join(tmp, entry.name))
                except OSError:
                    shutil.copy2(entry.path, os.path.join(tmp, entry.name))
        if os.path.lexists(target):
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class EmbeddedEngine:
    name = "local"

    def __init__(self, tasks: int = 1, cache_bytes: int = 1 << 30):
        self.tasks = tasks
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, mapreduce.Block] = OrderedDict()  # (path, mtime, size) -> Block

    @staticmethod
    def _key(path: str) -> tuple:
        st = os.stat(path)
        return (path, st.st_mtime_ns, st.st_size)

    def remember(self, area: WorkArea, image_id: str, table) -> None:
        """Cache the table just written to an image's points file, or a shared palette's union
        (kmeans_ops.palette), which then is the only table a run's iterations read (saves parsing
        it again)."""
        self._keep(self._key(area.points(image_id)), table)

    def _load(self, path: str):
        """Parsed points of one file, kept between iterations while the file is unchanged."""
        key = self._key(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        return self._keep(key, read_points(path))

    def _keep(self, key: tuple, table):
        entry = mapreduce.block(table.bgr(), table.counts, table.codes, table.mean())
        self._cache[key] = entry
        while sum(len(e) * 72 for e in self._cache.values()) > self.cache_bytes and len(self._cache) > 1:
            self._cache.popitem(last=False)  # 72 bytes per colour: the arrays of a Block
        return entry

    # The work area is already where this engine reads it: staging, fetching and discarding are trivial.
    def stage(self, local: WorkArea, key: str) -> WorkArea:
        return local

    def fetch(self, area: WorkArea, image_id: str, local_root: str) -> WorkArea:
        """The work area holding the image's files for reconstruction: ``area`` itself when it is
        the one at ``local_root`` (the usual case); otherwise (a palette unit iterated in an area of
        its own, kmeans_ops.palette.unit_area) the image's folder is linked into ``local_root`` and
        that area returned, as the Hadoop engine's fetch downloads it there."""
        if os.path.realpath(area.root) == os.path.realpath(local_root):
            return area
        local = WorkArea(local_root)
        link_folder(area.image_dir(image_id), local.image_dir(image_id))
        return local

    def discard(self, area: WorkArea) -> None:
        import shutil

        shutil.rmtree(area.root, ignore_errors=True)

    def iterate(self, area: WorkArea, image_ids: list[str], iteration: int, delta: float) -> dict[str, dict]:
        figures = {}
        for image_id in image_ids:
            data = self._load(area.points(image_id))
            centroids = read_clusters(area.clusters(image_id, iteration - 1))
            part = mapreduce.map_table(data, centroids, self.tasks)
            update = mapreduce.reduce_image(part, centroids, delta)
            write_clusters(area.clusters(image_id, iteration), update.centroids)
            figures[image_id] = update.figures(iteration)
            write_json(area.stats(image_id, iteration), figures[image_id])
        return figures
