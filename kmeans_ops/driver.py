"""The driver: iterate MapReduce jobs until each image converges or reaches max_iter.

Images that converge leave the batch, so later jobs carry only the images still moving. A run
with one palette for all its images iterates its palette unit instead (:func:`run_palette`). The
history of each image (per iteration: squared error, largest shift, re-seeded clusters) is in its
``stats-NNN.json`` files and is read back with :func:`history`.
"""

from __future__ import annotations

import sys
import time

from .params import Params
from .storage import read_json
from .workarea import WorkArea


def run_iterations(area: WorkArea, image_ids: list[str], engine, params: Params, progress=None,
                   limits: dict[str, int] | None = None, first: int = 1, last: int | None = None) -> dict[str, dict]:
    """Run iterations ``first``.. until every image converged or ``params.max_iter`` was reached.

    Returns ``{image id: {"iterations": n, "converged": bool}}``; ``progress(iteration, active,
    figures)`` is called after each job. ``limits``: fewer iterations for some images (the quality
    search's probes): an image leaves the batch after its limit, as at max_iter. ``first`` and
    ``last``: only iterations ``first`` to ``last`` (at most max_iter) of a run whose earlier ones
    are done (``clusters-(first-1)`` written), as one Airflow task of the DAG runs them
    (KMeansIterationOperator); an image still moving after ``last`` has ``converged`` false.
    """
    last = params.max_iter if last is None else min(last, params.max_iter)
    state = {image_id: {"iterations": first - 1, "converged": False} for image_id in image_ids}
    limits = limits or {}
    active = list(image_ids)
    for iteration in range(first, last + 1):
        done = [image_id for image_id in active if limits.get(image_id, params.max_iter) < iteration]
        engine.release(area, done)
        active = [image_id for image_id in active if image_id not in done]
        if not active:
            break
        figures = engine.iterate(area, active, iteration, params.delta)
        for image_id in active:
            state[image_id]["iterations"] = iteration
            state[image_id]["converged"] = figures[image_id]["converged"]
        if progress:
            progress(iteration, active, figures)
        moving = [image_id for image_id in active if not figures[image_id]["converged"]]
        engine.release(area, [image_id for image_id in active if image_id not in moving])
        active = moving
    engine.release(area, active)  # at max_iter (or at ``last``)
    return state


def run_palette(area: WorkArea, unit: str, engine, params: Params, progress=None) -> dict:
    """Iterate a run's shared palette (the unit written by kmeans_ops.palette): one MapReduce job
    per iteration for all the run's images, until it converges or ``params.max_iter`` is reached.
    A fixed palette (a palette file) is not iterated: its state is palette.FIXED_STATE and no job
    runs. Returns ``{"iterations": n, "converged": bool}``, the state of every image of the run."""
    from .palette import FIXED_STATE, mode

    if mode(params) == "file":
        return dict(FIXED_STATE)
    return run_iterations(area, [unit], engine, params, progress)[unit]


def history(area: WorkArea, image_id: str, iterations: int) -> list[dict]:
    return [read_json(area.stats(image_id, i)) for i in range(1, iterations + 1)]


def print_progress(max_iter: int, stream=None, shared_by: int | None = None):
    """A progress callback printing one line per iteration to ``stream`` (default: sys.stderr as it
    is when a line is printed). ``shared_by``: the job iterates one palette shared by that many
    images (a run with ``palette`` "run")."""
    start = time.perf_counter()

    def progress(iteration, active, figures):
        shifts = [f["max_shift"] for f in figures.values()]
        done = sum(f["converged"] for f in figures.values())
        if shared_by is None:
            what = f"{len(active)} image(s) in the job, {done} converged"
        else:
            what = f"one palette for {shared_by} image(s), {'converged' if done else 'moving'}"
        print(
            f"iteration {iteration}/{max_iter}: {what}, "
            f"largest shift {max(shifts):.3f}, {time.perf_counter() - start:.1f}s",
            file=stream or sys.stderr,
            flush=True,
        )

    return progress
