"""The embedded engine: one iteration for a batch of images, in process, on the local filesystem.

Each image's table is mapped, the partials are combined and reduced, exactly as a Hadoop job does
with the same functions. The engine keeps, between the iterations of a run, each table prepared
for mapping and its Hamerly bounds (kmeans_ops.hamerly): an iteration then recomputes only the
colours whose bounds fail, and its partials equal, bit for bit, those of the full map. With
``tasks`` other than 1, each iteration maps the whole table again in that many threads.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque

from .. import hamerly, mapreduce
from ..formats import read_clusters, read_points, write_clusters
from ..storage import write_json
from ..workarea import WorkArea
from .base import Engine


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


class EmbeddedEngine(Engine):
    name = "local"
    in_process = True

    def __init__(self, tasks: int = 1, cache_bytes: int = 1 << 30):
        self.tasks = tasks
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, mapreduce.Block] = OrderedDict()  # (path, mtime, size) -> Block
        self._bounds: dict[tuple, hamerly.Bounds] = {}  # same keys: the map-side state of a run
        self._pins: dict[tuple, int] = {}  # (image.json path, mtime, size) -> pinned centroids
        #: per iteration mapped with bounds: (colours, colours recomputed, colours tightened)
        self.recomputed: deque[tuple[int, int, int]] = deque(maxlen=4096)

    @staticmethod
    def _key(path: str) -> tuple:
        st = os.stat(path)
        return (path, st.st_mtime_ns, st.st_size)

    def remember(self, area: WorkArea, image_id: str, table) -> None:
        """Cache the table just written to an image's points file, or a shared palette's union
        (kmeans_ops.palette), which then is the only table a run's iterations read (saves parsing
        it again). This engine will iterate it: its compiled loops start loading."""
        self._keep(self._key(area.points(image_id)), table)
        hamerly.warm_up()

    def prepare(self) -> None:
        """Load the compiled loops of the bounded kernel in the background while the run reads its
        images (kmeans_ops.hamerly.warm_up)."""
        hamerly.warm_up()

    def release(self, area: WorkArea, image_ids: list[str]) -> None:
        """Drop the tables and bounds of images the run iterates no more."""
        for image_id in image_ids:
            path = area.points(image_id)
            for key in [key for key in self._cache if key[0] == path]:
                del self._cache[key]
                self._bounds.pop(key, None)

    def _load(self, path: str) -> tuple[tuple, mapreduce.Block]:
        """Parsed points of one file, kept between iterations while the file is unchanged."""
        key = self._key(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return key, self._cache[key]
        return key, self._keep(key, read_points(path))

    def _keep(self, key: tuple, table):
        entry = mapreduce.block(table.bgr(), table.counts, table.codes, table.mean())
        self._cache[key] = entry
        self._bounds.pop(key, None)
        self._evict()
        return entry

    def _evict(self) -> None:
        """Drop the least recently used tables (and their bounds) beyond ``cache_bytes``: 72 bytes
        per colour for the arrays of a Block, those of its bounds as they are."""
        def size():
            return sum(len(e) * 72 for e in self._cache.values()) + sum(b.nbytes for b in self._bounds.values())

        while size() > self.cache_bytes and len(self._cache) > 1:
            key, _ = self._cache.popitem(last=False)
            self._bounds.pop(key, None)

    def _pinned(self, area: WorkArea, image_id: str) -> int:
        """How many of the image's first centroids are pinned colours (``pinned`` of its image.json;
        none for a unit written without one: points and clusters are all this engine needs)."""
        from ..storage import read_json

        try:
            key = self._key(area.meta(image_id))
        except FileNotFoundError:
            return 0
        if key not in self._pins:
            self._pins[key] = int(read_json(area.meta(image_id)).get("pinned") or 0)
        return self._pins[key]

    def _map(self, key: tuple, data: mapreduce.Block, centroids) -> mapreduce.Partials:
        """Map a whole table: with its bounds from the last iteration if it has them (any centroids
        of the same K: the bounds follow the centroids' shifts from those they were made for)."""
        if self.tasks != 1:
            return mapreduce.map_table(data, centroids, self.tasks)
        state = self._bounds.get(key)
        if state is None or state.k != len(centroids):
            state, part = hamerly.start(data, centroids)
            self._bounds[key] = state
            self._evict()
        else:
            part = hamerly.step(data, state, centroids)
        self.recomputed.append((len(state), state.recomputed, state.tightened))
        return part

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
            key, data = self._load(area.points(image_id))
            centroids = read_clusters(area.clusters(image_id, iteration - 1))
            part = self._map(key, data, centroids)
            update = mapreduce.reduce_image(part, centroids, delta, self._pinned(area, image_id))
            write_clusters(area.clusters(image_id, iteration), update.centroids)
            figures[image_id] = update.figures(iteration)
            write_json(area.stats(image_id, iteration), figures[image_id])
        return figures
