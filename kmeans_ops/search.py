"""``k`` "auto": per image, the fewest colours whose PSNR reaches a quality target.

``quality`` (MIN, MAX) in PSNR dB and ``max_k``: the chosen K is the smallest K in ``lowest..max_k``
(``lowest`` is 2, or one more than the pinned colours) whose result reaches MAX; when none does,
``max_k`` colours if they reach MIN; else the image fails with one line naming both figures, and
nothing is written for it.

Each candidate K of an image is a **candidate unit** of the work area (``<image id>=k<K>``, laid out
like an image: its points file a hard link to the image's, its own ``clusters-000.txt`` and
``image.json``), so the driver and every engine iterate it as they iterate an image. The search
goes in rounds; a round gives every image still searching one step, and all the units of a
round, of every image of the batch, are iterated together: one MapReduce job per iteration for
all of them (driver.run_iterations), on both engines.

Every candidate starts as the fixed-K run ``-k K`` starts (k-means++ or random from ``seed``, the
pinned colours first; initialise.Starts shares k-means++'s draws between the K of one number of
trials, with the same centres). A step is one of:

- a **probe**: a new candidate, iterated :data:`PROBE_ITERATIONS` times only (fewer if it
  converges). Lloyd's iterations lower the squared error, so a probe's PSNR is (but for the
  rounding of the palette) below what the same candidate reaches at the end;
- a **finish**: a probe continued to the end (convergence or ``max_iter``), in a unit of its own
  whose start is the probe's last centroids; its iterations are appended to the probe's, so the
  finished candidate is iteration for iteration the fixed-K run ``-k K``.

Which step comes next (:func:`next_steps`, a pure function of the candidates so far, each with
its current PSNR and whether it is final): doubling from ``lowest`` (2, 4, 8, ...) until a
candidate reaches MAX or ``max_k`` is reached, then bisection between the largest K below the
smallest K reaching MAX and that K, both on the probes' PSNR, until they are neighbours; then
both are finished (in one round). If the finished upper one falls below MAX, or the finished
lower one reaches it, the bisection goes on from there. The search ends when the smallest K
reaching MAX is final and its neighbour below is final and below MAX (or is not in the range).

What is guaranteed, exactly, and checked by tests/test_quality.py against a sweep of fixed-K
runs: the chosen K's output (the fixed-K run ``-k K``, bit for bit) reaches MAX, and the fixed-K
run at K - 1 does not. That the chosen K is the smallest reaching MAX assumes that PSNR grows
with K, which K-means nearly always gives; where it does not, a smaller K that reaches MAX but
lies below a K that does not is not found. Only the candidates finished cost a full run; the
others cost their probe's few iterations (docs/benchmarks.md: the cost against one fixed-K run).
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


#: Iterations of a probe (a candidate not finished): its PSNR is then within a few tenths of a dB
#: of the finished candidate's on the sample photos.
PROBE_ITERATIONS = 2


def _log_interpolated(k0: int, p0: float, k1: int, p1: float, target: float) -> float | None:
    """The K where the line through (log K, PSNR) points (k0, p0) and (k1, p1) crosses ``target``
    (None when it does not rise): PSNR grows about linearly in log K (2.5-3.5 dB per doubling on
    the sample photos)."""
    if p0 is None or p1 is None or p1 <= p0:
        return None
    return k0 * 2 ** ((target - p0) / (p1 - p0) * math.log2(k1 / k0))


def next_steps(tried: dict[int, tuple], lowest: int, highest: int, target: float,
               gain: float = 0.0) -> list[tuple[int, str]]:
    """The next steps, ``[(K, "probe" | "finish")]``, given ``tried`` ({K: (PSNR, final)}: the PSNR
    of each candidate so far and whether it is finished); [] when the search is over (module doc).
    ``gain``: what finishing added to the PSNR of the candidates finished so far (:func:`gain`),
    added to the PSNR of the others to steer the search.

    Up: doubling from ``lowest`` for the first three K, then the K where the line through the
    two largest (log K, PSNR) crosses the target, a tenth more (at least 1.25 and at most 4 times
    the largest so far). Between the largest K below the target and the smallest reaching it:
    the same interpolation, kept at least a quarter of the interval from either end (bisection
    when the PSNRs do not rise), until they are neighbours."""
    if not tried:
        return [(lowest, "probe")]
    tried = {k: (psnr if final or psnr is None else psnr + gain, final) for k, (psnr, final) in tried.items()}
    passing = [k for k, (psnr, _) in tried.items() if reaches(psnr, target)]
    if not passing:
        top = max(tried)
        if top >= highest:
            return [] if tried[top][1] else [(top, "finish")]
        up = 2 * top
        if len(tried) >= 3:
            second = max(k for k in tried if k < top)
            guess = _log_interpolated(second, tried[second][0], top, tried[top][0], target)
            if guess is not None:
                up = min(4 * top, max(math.ceil(1.25 * top), math.ceil(1.1 * guess)))
        return [(min(highest, up), "probe")]
    hi = min(passing)
    below = [k for k in tried if k < hi]  # all below the target: hi is the smallest reaching it
    if below and hi - max(below) > 1:
        lo = max(below)
        guess = _log_interpolated(lo, tried[lo][0], hi, tried[hi][0], target)
        middle = (lo + hi) // 2 if guess is None else round(guess)
        margin = (hi - lo) // 4
        return [(min(hi - 1 - margin, max(lo + 1 + margin, middle)), "probe")]
    ends = [hi, max(below)] if below else [hi]  # neighbours (or hi is the lowest K): finish both
    return [(k, "finish") for k in ends if not tried[k][1]]


def gain(candidates) -> float:
    """The mean PSNR added by finishing, over the finished ``candidates`` (dicts with ``psnr`` and
    ``probe_psnr``, exact outputs left out); 0 when none is."""
    gains = [c["psnr"] - c["probe_psnr"] for c in candidates
             if c.get("finished") and c["psnr"] is not None and c["probe_psnr"] is not None]
    return sum(gains) / len(gains) if gains else 0.0


def choose(tried: dict[int, tuple], quality: tuple[float, float]) -> int | None:
    """The chosen K of a search that is over: the smallest K reaching MAX, else the largest tried
    if it reaches MIN, else None (``tried`` as in :func:`next_steps`)."""
    low, high = quality
    passing = [k for k, (psnr, _) in tried.items() if reaches(psnr, high)]
    if passing:
        return min(passing)
    top = max(tried)
    return top if reaches(tried[top][0], low) else None


def _db(psnr: float | None) -> str:
    return "inf" if psnr is None else f"{psnr:.2f}"


def refusal(source: str, tried: dict[int, tuple], quality: tuple[float, float], why: str) -> str:
    """The one line of an image that cannot reach MIN (``why``: what bounded K)."""
    top = max(tried)
    return (f"{shown(source)}: quality: PSNR {_db(tried[top][0])} dB with {top} colours ({why}) is below the "
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


def _unit_folder(area: WorkArea, local: WorkArea, image_id: str, unit: str) -> None:
    """The folder of ``unit`` in ``area``, its points file a hard link to the image's in ``local``."""
    os.makedirs(area.image_dir(unit), exist_ok=True)
    try:
        os.link(local.points(image_id), area.points(unit))
    except OSError:
        shutil.copyfile(local.points(image_id), area.points(unit))


def make_probe(area: WorkArea, local: WorkArea, image_id: str, k: int, starts, meta: dict, params) -> str:
    """Write the candidate unit of ``image_id`` at ``k`` colours into ``area``: the fixed-K run's
    start (``starts``: an initialise.Starts of the image); returns its id."""
    from .formats import write_clusters
    from .storage import write_json

    unit = unit_id(image_id, k)
    _unit_folder(area, local, image_id, unit)
    centroids = starts(k)
    write_clusters(area.clusters(unit, 0), centroids)
    write_json(area.meta(unit), {**meta, "image_id": unit, "kind": "candidate", "image": image_id,
                                 "k_requested": k, "k": len(centroids), "pinned": len(params.keep)})
    return unit


def make_finish(area: WorkArea, local: WorkArea, image_id: str, k: int, done: int) -> str:
    """Write into ``area`` the unit that continues the candidate of ``image_id`` at ``k`` (in
    ``local``, ``done`` iterations so far) from its last centroids; returns its id."""
    unit = unit_id(image_id, k)
    _unit_folder(area, local, image_id, unit)
    for name in (area.meta(unit), area.clusters(unit, 0)):
        source = local.meta(unit) if name == area.meta(unit) else local.clusters(unit, done)
        shutil.copyfile(source, name)
    return unit


def append_iterations(source: WorkArea, local: WorkArea, unit: str, done: int, more: int) -> None:
    """Append the ``more`` iterations of a finishing unit (in ``source``) to the candidate's
    ``done`` ones in ``local``: its clusters and stats 1..more become done+1..done+more."""
    from .storage import read_json, write_bytes, write_json

    for j in range(1, more + 1):
        with open(source.clusters(unit, j), "rb") as handle:
            write_bytes(local.clusters(unit, done + j), handle.read())
        write_json(local.stats(unit, done + j), {**read_json(source.stats(unit, j)), "iteration": done + j})


def candidate_psnr(table: ColourTable, centroids) -> float | None:
    """The PSNR of a candidate's final centroids, as reconstruct.finish measures the output."""
    from .reconstruct import label_table, palette_of, quality

    return quality(table, label_table(table, centroids), palette_of(centroids))["psnr"]


def search(local: WorkArea, image_ids: list[str], tables: dict, engine, params, key: str, progress=None,
           say=None) -> dict[str, dict]:
    """Search K for every image of a batch (ingested into ``local``, the local work area): rounds
    of steps, each round's units of every image iterated together (see the module).

    ``tables``: the images' colour tables the caller still holds (the others are read from their
    points files). Returns per image ``{"unit", "state", "quality"}`` (the chosen candidate unit,
    now in ``local``, the driver's state of it, and the ``quality`` entry of its JSON) or
    ``{"error": one line, "quality"}``. RuntimeError (HDFS, a Hadoop job) ends the search.
    """
    from .driver import run_iterations
    from .formats import read_clusters, read_points
    from .initialise import Starts
    from .storage import read_json

    say = say or (lambda *a: None)
    metas = {i: read_json(local.meta(i)) for i in image_ids}
    table_of = {i: tables.get(i) if tables.get(i) is not None else read_points(local.points(i)) for i in image_ids}
    limits, results = {}, {}
    # per image and K: {"psnr", "final", "iterations", "converged", "colours", "probe": its PSNR as a probe}
    tried: dict[str, dict[int, dict]] = {i: {} for i in image_ids}
    for image_id in image_ids:
        try:
            limits[image_id] = bounds(table_of[image_id], params, metas[image_id]["source"])
        except InputError as err:
            results[image_id] = {"error": str(err), "quality": None}
    searching = [i for i in image_ids if i in limits]
    starts = {i: Starts(table_of[i], params.init, params.seed, params.keep) for i in searching}
    target, probe = params.quality[1], min(PROBE_ITERATIONS, params.max_iter)

    def so_far(image_id):
        return {k: (c["psnr"], c["final"]) for k, c in tried[image_id].items()}

    for number in range(1, 10**6):
        todo = {i: steps for i in searching
                if (steps := next_steps(so_far(i), limits[i][0], limits[i][1], target,
                                        gain(tried[i].values())))}
        if not todo:
            break
        here = WorkArea(posixpath.join(local.root, "search", f"round-{number:02d}"))
        units, caps = {}, {}  # unit -> (image id, K, iterations before this round)
        for image_id, steps in todo.items():
            for k, step in steps:
                if step == "probe":
                    unit = make_probe(here, local, image_id, k, starts[image_id], metas[image_id], params)
                    units[unit], caps[unit] = (image_id, k, 0), probe
                else:
                    done = tried[image_id][k]["iterations"]
                    unit = make_finish(here, local, image_id, k, done)
                    units[unit], caps[unit] = (image_id, k, done), params.max_iter - done
                engine.remember(here, unit, table_of[image_id])
        say(f"search round {number}: " + ", ".join(
            f"{shown(metas[i]['source'].rsplit('/', 1)[-1])} " + " ".join(f"K={k} {step}" for k, step in steps)
            for i, steps in todo.items()))
        area = engine.stage(here, f"{key}-search-{number:02d}")
        try:
            states = run_iterations(area, list(units), engine, params, progress, limits=caps)
            for unit, (image_id, k, done) in units.items():
                iterations = states[unit]["iterations"]
                if done:  # a finish: its iterations after the probe's, in the candidate's folder
                    append_iterations(engine.fetch(area, unit, here.root), local, unit, done, iterations)
                else:
                    engine.fetch(area, unit, local.root)
                centroids = read_clusters(local.clusters(unit, done + iterations))
                final = states[unit]["converged"] or done + iterations >= params.max_iter
                psnr = candidate_psnr(table_of[image_id], centroids)
                earlier = tried[image_id].get(k, {})
                tried[image_id][k] = {"psnr": psnr, "final": final, "iterations": done + iterations,
                                      "converged": states[unit]["converged"], "colours": len(centroids),
                                      "probe_psnr": earlier.get("probe_psnr", psnr), "finished": bool(done)}
        finally:
            if area.root != here.root:
                engine.discard(area)
            shutil.rmtree(here.root, ignore_errors=True)
    for image_id in searching:
        chosen = choose(so_far(image_id), params.quality)
        record = {
            "min_psnr": params.quality[0], "target_psnr": target, "max_k": params.max_k,
            "probe_iterations": probe, "chosen_k": chosen,
            "reached_target": chosen is not None and reaches(tried[image_id][chosen]["psnr"], target),
            "candidates": [{"k": k, **c} for k, c in tried[image_id].items()],
        }
        if chosen is None:
            results[image_id] = {"error": refusal(metas[image_id]["source"], so_far(image_id), params.quality,
                                                  limits[image_id][2]), "quality": record}
        else:
            c = tried[image_id][chosen]
            results[image_id] = {"unit": unit_id(image_id, chosen), "quality": record,
                                 "state": {"iterations": c["iterations"], "converged": c["converged"]}}
    return results


def infinite(psnr: float | None) -> float:
    """A PSNR as a number (None, an exact output, as +inf): for sorting and charts."""
    return math.inf if psnr is None else psnr


def search_run(plan: dict, engine, say=None) -> dict:
    """k auto in the DAG (its ``search`` task): :func:`search` for the run's images (``plan`` as
    ``upload`` pushes it: ``images`` {id: stem}, ingested into ``local_work``), in batches of
    ``batch_size``, each batch's candidates one job per iteration, as the CLI does. Returns the plan
    with ``searched`` {image id: {"unit", "state", "quality"}} for the images with a chosen K (what
    ``finals`` and ``reconstruct`` read), the others out of ``images`` and in ``failures`` (stage
    "search", the one-line reason). RuntimeError (HDFS, a Hadoop job) ends the search."""
    from .params import Params
    from .run import batches
    from .storage import read_json

    params, local = Params.from_json(plan["params"]), WorkArea(plan["local_work"])
    found = {}
    for number, batch in enumerate(batches(list(plan["images"]), int(plan["batch_size"]))):
        found.update(search(local, batch, {}, engine, params, f"{plan['key']}-{number}", say=say))
    searched = {i: r for i, r in found.items() if "unit" in r}
    failures = [{"source": read_json(local.meta(i))["source"], "error": r["error"], "stage": "search"}
                for i, r in found.items() if "unit" not in r]
    return {**plan, "searched": searched, "images": {i: s for i, s in plan["images"].items() if i in searched},
            "failures": list(plan.get("failures") or []) + failures}
