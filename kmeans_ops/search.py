"""``k`` "auto": per image, the fewest colours whose PSNR reaches a quality target.

``quality`` (MIN, MAX) in PSNR dB and ``max_k``: the chosen K is the smallest K in ``lowest..max_k``
(``lowest`` is 2, or one more than the pinned colours) whose result reaches MAX; when none does,
``max_k`` colours if they reach MIN; else the image fails with one line naming both figures, and
nothing is written for it.

Each candidate K of an image is a **candidate unit** of the work area (``<image id>=k<K>``, laid out
like an image: its points file a hard link to the image's, its own ``clusters-000.txt`` and
``image.json``), so the driver and every engine iterate it as they iterate an image. The search
goes in rounds; a round gives every image still searching one new candidate, and all the
candidates of a round, of every image of the batch, are iterated together: one MapReduce job per
iteration for all of them (driver.run_iterations), on both engines.

Which K a round tries (:func:`next_k`, a pure function of the candidates tried so far): doubling
from ``lowest`` (2, 4, 8, ...) until one reaches MAX or ``max_k`` is reached, then bisection
between the largest K below MAX and the smallest K reaching it, until they are neighbours. About
``2 log2 K`` candidates, most of them small: the K-means cost of a candidate grows with K.

Every candidate starts as the fixed-K run ``-k K`` starts (k-means++ or random from ``seed``, the
pinned colours first), so its result, and the written image, are exactly those of ``-k K``: the
chosen K can be checked against a sweep of fixed-K runs (tests/test_quality.py). The search
assumes that PSNR grows with K, which K-means nearly always gives; where it does not, a K below
the chosen one that reaches MAX but lies between two candidates that do not is not found.
"""

from __future__ import annotations

import math
import os
import posixpath
import shutil

from .colours import ColourTable
from .errors import InputError, shown
from .workarea import WorkArea

#: Between an image id and a candidate's K in a candidate unit's id ("=": no image id holds it).
UNIT_MARK = "=k"


def unit_id(image_id: str, k: int) -> str:
    return f"{image_id}{UNIT_MARK}{k}"


def reaches(psnr: float | None, target: float) -> bool:
    """Whether a PSNR (None: the output equals the input, infinite PSNR) reaches ``target`` dB."""
    return psnr is None or psnr >= target


def next_k(tried: dict[int, float | None], lowest: int, highest: int, target: float) -> int | None:
    """The next K to try given ``tried`` ({K: PSNR}), or None when the search is over.

    Doubling from ``lowest`` until a K reaches ``target`` (or ``highest`` was tried), then
    bisection between the largest K below the target and the smallest reaching it."""
    if not tried:
        return lowest
    passing = [k for k, psnr in tried.items() if reaches(psnr, target)]
    if not passing:
        top = max(tried)
        return None if top >= highest else min(highest, 2 * top)
    hi = min(passing)
    below = [k for k in tried if k < hi]  # all below the target: hi is the smallest reaching it
    if not below:
        return None
    lo = max(below)
    return None if hi - lo <= 1 else (lo + hi) // 2


def choose(tried: dict[int, float | None], quality: tuple[float, float]) -> int | None:
    """The chosen K: the smallest reaching MAX, else the largest tried if it reaches MIN, else None."""
    low, high = quality
    passing = [k for k, psnr in tried.items() if reaches(psnr, high)]
    if passing:
        return min(passing)
    top = max(tried)
    return top if reaches(tried[top], low) else None


def _db(psnr: float | None) -> str:
    return "inf" if psnr is None else f"{psnr:.2f}"


def refusal(source: str, tried: dict[int, float | None], quality: tuple[float, float], why: str) -> str:
    """The one line of an image that cannot reach MIN (``why``: what bounded K)."""
    top = max(tried)
    return (f"{shown(source)}: quality: PSNR {_db(tried[top])} dB with {top} colours ({why}) is below the "
            f"minimum of {quality[0]:g} dB (target {quality[1]:g} dB); nothing written")


def bounds(table: ColourTable, params, source: str) -> tuple[int, int, str]:
    """(lowest, highest, what bounds highest) of an image's candidates: ``max_k``, or fewer when the
    image has fewer distinct colours (more would be the same exact palette) or when K x distinct
    colours would pass the cap (settings.max_k_colours; InputError naming ``source`` when even the
    lowest K would)."""
    from . import settings
    from .initialise import check_cost

    lowest = max(2, len(params.keep) + 1)
    highest, why = params.max_k, f"max_k {params.max_k}"
    if len(table) + len(params.keep) < highest:
        highest, why = max(lowest, len(table) + len(params.keep)), "every distinct colour"
    cap = settings.max_k_colours() // max(1, len(table))
    if cap < highest:
        check_cost(table, lowest, source)
        highest, why = cap, "the cap KMEANS_MAX_K_COLOURS"
    return lowest, highest, why


def make_candidate(area: WorkArea, local: WorkArea, image_id: str, k: int, table: ColourTable, params, meta: dict,
                   engine) -> str:
    """Write the candidate unit of ``image_id`` at ``k`` colours into ``area`` (its points file a
    hard link to the image's in ``local``) and offer its table to the engine; returns its id."""
    from .formats import write_clusters
    from .initialise import initial_centroids
    from .storage import write_json

    unit = unit_id(image_id, k)
    os.makedirs(area.image_dir(unit), exist_ok=True)
    try:
        os.link(local.points(image_id), area.points(unit))
    except OSError:
        shutil.copyfile(local.points(image_id), area.points(unit))
    centroids = initial_centroids(table, k, params.init, params.seed, params.keep)
    write_clusters(area.clusters(unit, 0), centroids)
    write_json(area.meta(unit), {**meta, "image_id": unit, "kind": "candidate", "image": image_id,
                                 "k_requested": k, "k": len(centroids), "pinned": len(params.keep)})
    engine.remember(area, unit, table)
    return unit


def candidate_psnr(table: ColourTable, centroids) -> float | None:
    """The PSNR of a candidate's final centroids, as reconstruct.finish measures the output."""
    from .reconstruct import label_table, palette_of, quality

    return quality(table, label_table(table, centroids), palette_of(centroids))["psnr"]


def search(local: WorkArea, image_ids: list[str], tables: dict, engine, params, key: str, progress=None,
           say=None) -> dict[str, dict]:
    """Search K for every image of a batch (ingested into ``local``, the local work area): rounds
    of candidates, each round's candidates of every image iterated together (see the module).

    ``tables``: the images' colour tables the caller still holds (the others are read from their
    points files). Returns per image ``{"unit", "state", "quality"}`` (the chosen candidate unit,
    now in ``local``, the driver's state of it, and the ``quality`` entry of its JSON) or
    ``{"error": one line, "quality"}``. RuntimeError (HDFS, a Hadoop job) ends the search.
    """
    from .driver import run_iterations
    from .formats import read_clusters, read_points
    from .storage import read_json

    say = say or (lambda *a: None)
    metas = {i: read_json(local.meta(i)) for i in image_ids}
    table_of = {i: tables.get(i) if tables.get(i) is not None else read_points(local.points(i)) for i in image_ids}
    limits, tried, found, results = {}, {i: {} for i in image_ids}, {i: {} for i in image_ids}, {}
    for image_id in image_ids:
        try:
            limits[image_id] = bounds(table_of[image_id], params, metas[image_id]["source"])
        except InputError as err:
            results[image_id] = {"error": str(err), "quality": None}
    searching = [i for i in image_ids if i in limits]
    target = params.quality[1]
    for number in range(1, 10**6):
        todo = {i: k for i in searching
                if (k := next_k(tried[i], limits[i][0], limits[i][1], target)) is not None}
        if not todo:
            break
        here = WorkArea(posixpath.join(local.root, "search", f"round-{number:02d}"))
        units = {i: make_candidate(here, local, i, k, table_of[i], params, metas[i], engine) for i, k in todo.items()}
        say(f"search round {number}: " + ", ".join(f"{shown(metas[i]['source'].rsplit('/', 1)[-1])} K={k}"
                                                    for i, k in todo.items()))
        area = engine.stage(here, f"{key}-search-{number:02d}")
        try:
            states = run_iterations(area, list(units.values()), engine, params, progress)
            for image_id, unit in units.items():
                engine.fetch(area, unit, local.root)
                centroids = read_clusters(local.clusters(unit, states[unit]["iterations"]))
                psnr = candidate_psnr(table_of[image_id], centroids)
                tried[image_id][todo[image_id]] = psnr
                found[image_id][todo[image_id]] = (unit, states[unit], len(centroids))
        finally:
            if area.root != here.root:
                engine.discard(area)
            shutil.rmtree(here.root, ignore_errors=True)
    for image_id in searching:
        chosen = choose(tried[image_id], params.quality)
        record = {
            "min_psnr": params.quality[0], "target_psnr": target, "max_k": params.max_k,
            "chosen_k": chosen, "reached_target": chosen is not None and reaches(tried[image_id][chosen], target),
            "candidates": [{"k": k, "colours": found[image_id][k][2], "psnr": psnr,
                            "iterations": found[image_id][k][1]["iterations"],
                            "converged": found[image_id][k][1]["converged"]} for k, psnr in tried[image_id].items()],
        }
        if chosen is None:
            results[image_id] = {"error": refusal(metas[image_id]["source"], tried[image_id], params.quality,
                                                  limits[image_id][2]), "quality": record}
        else:
            unit, state, _ = found[image_id][chosen]
            results[image_id] = {"unit": unit, "state": state, "quality": record}
    return results


def infinite(psnr: float | None) -> float:
    """A PSNR as a number (None, an exact output, as +inf): for sorting and charts."""
    return math.inf if psnr is None else psnr
