"""The work area of a run: where each image's points, clusters and per-iteration figures live.

The same relative layout is used on the local filesystem and on HDFS::

    <root>/images/<image id>/image.json          ingest metadata (source, size, k, ...)
    <root>/images/<image id>/points.tsv          weighted points (formats.py)
    <root>/images/<image id>/clusters-000.txt    initial centroids (seed clusters format)
    <root>/images/<image id>/clusters-NNN.txt    centroids after iteration NNN
    <root>/images/<image id>/stats-NNN.json      figures of iteration NNN (sse, max shift, ...)
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkArea:
    root: str

    def image_dir(self, image_id: str) -> str:
        return posixpath.join(self.root, "images", image_id)

    def meta(self, image_id: str) -> str:
        return posixpath.join(self.image_dir(image_id), "image.json")

    def points(self, image_id: str) -> str:
        return posixpath.join(self.image_dir(image_id), "points.tsv")

    def clusters(self, image_id: str, iteration: int) -> str:
        return posixpath.join(self.image_dir(image_id), f"clusters-{iteration:03d}.txt")

    def stats(self, image_id: str, iteration: int) -> str:
        return posixpath.join(self.image_dir(image_id), f"stats-{iteration:03d}.json")
