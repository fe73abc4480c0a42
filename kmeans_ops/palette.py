"""One palette for a set of images: the run's images clustered together (``palette`` "run"), or a
fixed palette read from a clusters file (``palette`` a path); "image", the default, clusters each
image alone.

A shared palette is a **palette unit** of the work area, a folder laid out like an image's
(``<work>/images/<unit>/``, see workarea.py), so the driver and every engine iterate it as they
iterate an image. Its files:

- ``points.tsv``: the union of the run's colour tables, each colour once with the pixel counts of
  all the images summed (at most 2^24 lines, whatever the number of images). Weighted K-means on it
  is K-means on all the run's pixels.
- ``image.json``: kind "palette", ``mode`` ("run" or "file"), ``members`` (the image ids), and
  ``mean_bgr``, the mean of all the run's pixels: the frame in which map breaks ties, as
  scikit-learn's lloyd does on the union of the pixels.
- ``clusters-000.txt``: the initial centroids, from k-means++ or the seed's random rule on the union
  (or an ``init`` file); for a fixed palette, the palette itself (no iterations follow).

One MapReduce job per iteration then covers the whole run on every engine, and the weighted table
keeps the shuffle at K records per map task. Each image is reconstructed with the unit's centroids
and its own colour table (``reconstruct.finish(..., palette_unit=unit)``), so it gets its own labels,
MSE and PSNR.

What a caller runs (the CLI; the DAG's tasks), for ``local`` the local work area ingest wrote:

1. ``unit = prepare(local, image_ids, params)`` (or :func:`merge_run` / :func:`fix_palette`);
2. ``area = engine.stage(unit_area(local, unit), key)``: the engine stages the unit alone (the
   Hadoop engine uploads one folder, not every image's: only reconstruction reads those, locally;
   staging the whole ``local`` works too). Then ``driver.run_palette(area, unit, engine, params)``
   (a fixed palette: no staging, no job) and ``engine.fetch(area, unit, local.root)``, which brings
   the unit's final centroids back beside the images;
3. ``reconstruct.finish(local, image_id, state, ..., palette_unit=unit)`` per image, with
   ``{"palette": describe(params, n)}`` in its JSON; ``engine.discard(area)`` when staging made a
   copy (``area`` is neither ``local`` nor the unit's area).
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable

import numpy as np

from .colours import ColourTable
from .errors import InputError
from .workarea import WorkArea

#: Ids of the palette units. They hold "=", which no image id holds (image ids are URL-quoted file
#: stems, kmeans_ops.run.image_id_of), so a unit never meets an image's folder; HDFS paths, WebHDFS
#: URLs and Hadoop's -input lists take "=" as it is.
RUN_UNIT = "palette=run"
FIXED_UNIT = "palette=file"
#: The driver's state of a fixed palette: final as given, after no iteration.
FIXED_STATE = {"iterations": 0, "converged": True}
#: Every 24-bit colour: the size of the union's accumulator.
_COLOURS = 1 << 24
#: The folder of a work area that holds a palette unit alone (see unit_area).
UNIT_AREA_DIR = "shared"


def mode(params) -> str:
    """"image" (each image its own palette), "run" (one palette for the run) or "file" (a fixed
    palette: ``params.palette`` is the path of its clusters file)."""
    return params.palette if params.palette in ("image", "run") else "file"


def unit_of(params) -> str | None:
    """The palette unit a run with these parameters iterates or applies; None for "image"."""
    return {"image": None, "run": RUN_UNIT, "file": FIXED_UNIT}[mode(params)]


def unit_area(local: WorkArea, unit: str) -> WorkArea:
    """A work area holding the palette ``unit`` of ``local`` alone, ``<local>/shared``, made afresh
    from the unit's files by hard links (no byte copied; copies across filesystems): what a caller
    stages so that an engine copying its input (the Hadoop engine, to HDFS) copies the unit only.
    ``engine.fetch(area, unit, local.root)`` brings the iterated unit back into ``local``."""
    from .engines.local import link_folder

    area = WorkArea(posixpath.join(local.root, UNIT_AREA_DIR))
    link_folder(local.image_dir(unit), area.image_dir(unit))
    return area


def union_table(tables: Iterable[ColourTable]) -> ColourTable:
    """The union of colour tables: every colour of any table once, with its counts summed.

    The tables are added one at a time into a count per 24-bit colour (128 MB, untouched pages
    cost nothing), so memory does not grow with the number of images and a table read from a file
    can be dropped once added. Equal to ``formats.merge_tables`` (tested), which holds every table
    at once and sorts their concatenation.
    """
    counts = np.zeros(_COLOURS, np.int64)
    for table in tables:
        counts[table.codes] += table.counts  # a table's codes are unique: no index repeats
    codes = np.flatnonzero(counts)
    return ColourTable(codes=codes.astype(np.uint32), counts=counts[codes])


def _member_tables(area: WorkArea, image_ids: list[str], tables: dict | None):
    """Each image's colour table: from ``tables`` when the caller still holds it, else read from its
    points file (one at a time)."""
    from .formats import read_points

    for image_id in image_ids:
        table = (tables or {}).get(image_id)
        yield table if table is not None else read_points(area.points(image_id))


def merge_run(area: WorkArea, image_ids: list[str], params, tables: dict | None = None, keep: bool = False):
    """Write the palette unit of a run clustered as one (``params.palette == "run"``): the union of
    the images' tables, its metadata and its initial centroids; returns the unit id.

    ``area`` is the local work area ingest wrote (before ``engine.stage``); ``image_ids`` the images
    ingested without error; ``tables`` ({image id: ColourTable}) saves reading the points files of
    the images the caller still holds. The initial centroids follow ``params.init`` on the union
    (k-means++ weighted by the summed counts, the seed's random rule, or an init file) with
    ``params.seed``; K is ``params.k``, or the union's number of colours when it has fewer. With
    ``keep``, returns (unit id, union table): the embedded engine can keep the table in memory
    (``engine.remember(staged, unit, table)``, with ``staged`` the area the engine will iterate). InputError when a colour has more pixels in all than a points line holds.
    """
    from .formats import MAX_COUNT, write_clusters, write_points
    from .initialise import check_cost, initial_centroids
    from .storage import write_json

    if not image_ids:
        raise ValueError("a shared palette needs at least one image")
    table = union_table(_member_tables(area, image_ids, tables))
    if int(table.counts.max()) > MAX_COUNT:
        raise InputError(area.points(RUN_UNIT), f"a colour covers more than {MAX_COUNT} pixels of the run's "
                                                f"images, more than a points line holds: split the run")
    if params.init in ("kmeans++", "random"):
        check_cost(table, params.k, "palette=run (the union of the run's images)")
    centroids = initial_centroids(table, params.k, params.init, params.seed, params.keep)
    meta = {
        "image_id": RUN_UNIT,
        "kind": "palette",
        "mode": "run",
        "members": list(image_ids),
        "source": None,
        "width": None,
        "height": None,
        "pixels": table.n_pixels,
        "distinct_colours": len(table),
        "mean_bgr": table.mean().tolist(),  # the frame map computes distances in (mapreduce.assign)
        "k_requested": params.k,
        "k": len(centroids),
        "pinned": len(params.keep),
    }
    write_points(area.points(RUN_UNIT), RUN_UNIT, table)
    write_clusters(area.clusters(RUN_UNIT, 0), centroids)
    write_json(area.meta(RUN_UNIT), meta)
    return (RUN_UNIT, table) if keep else RUN_UNIT


def fix_palette(area: WorkArea, image_ids: list[str], params) -> str:
    """Write the palette unit of a fixed palette (``params.palette`` the path of a clusters file):
    its ``clusters-000.txt`` is the file's centroids, applied to every image with no iterations
    (the driver's state is FIXED_STATE); returns the unit id.

    The file is read again here (it was checked by params.validate): InputError naming it when it
    is no longer a clusters file of ``params.k`` centroids. Its content is never quoted.
    """
    from .formats import write_clusters
    from .initialise import centroids_file
    from .storage import write_json

    centroids = centroids_file(params.palette, params.k)
    meta = {
        "image_id": FIXED_UNIT,
        "kind": "palette",
        "mode": "file",
        "members": list(image_ids),
        "source": os.path.abspath(params.palette),
        "width": None,
        "height": None,
        "k_requested": params.k,
        "k": len(centroids),
    }
    write_clusters(area.clusters(FIXED_UNIT, 0), centroids)
    write_json(area.meta(FIXED_UNIT), meta)
    return FIXED_UNIT


def prepare(area: WorkArea, image_ids: list[str], params, tables: dict | None = None, keep: bool = False):
    """The palette unit of a run, written into the local work area after ingest: :func:`merge_run`
    for "run", :func:`fix_palette` for a palette file; None (nothing written) for "image".

    With ``keep`` returns (unit id, union table or None)."""
    which = mode(params)
    if which == "image":
        return (None, None) if keep else None
    if which == "run":
        return merge_run(area, image_ids, params, tables, keep)
    unit = fix_palette(area, image_ids, params)
    return (unit, None) if keep else unit


def describe(params, images: int) -> dict:
    """The ``palette`` entry of each image's JSON figures with a shared palette, e.g.
    ``{"mode": "run", "unit": "palette=run", "images": 3}`` (a fixed palette adds ``"file"``, its
    path); None for "image". ``images``: how many images share the palette."""
    which = mode(params)
    if which == "image":
        return None
    entry = {"mode": which, "unit": unit_of(params), "images": images}
    if which == "file":
        entry["file"] = os.path.abspath(params.palette)
    return entry
