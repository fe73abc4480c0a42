"""The driver: iterate MapReduce jobs until each image converges or reaches max_iter.

Images that converge leave the batch, so later jobs carry only the images still moving. The
history of each image (per iteration: squared error, largest shift, re-seeded clusters) is in its
``stats-NNN.json`` files and is read back with :func:`history`.
"""

from __future__ import annotations

import sys
import time

from .params import Params
from .storage import read_json
from .workarea import WorkArea


def run_iterations(area: WorkArea, image_ids: list[str], engine, params: Params, progress=None) -> dict[str, dict]:
    """Run iterations 1.. until every image converged or ``params.max_iter`` was reached.

    Returns ``{image id: {"iterations": n, "converged": bool}}``; ``progress(iteration, active,
    figures)`` is called after each job.
    """
    state = {image_id: {"iterations": 0, "converged": False} for image_id in image_ids}
    active = list(image_ids)
    for iteration in range(1, params.max_iter + 1):
        if not active:
            break
        figures = engine.iterate(area, active, iteration, params.delta)
        for image_id in active:
            state[image_id]["iterations"] = iteration
            state[image_id]["converged"] = figures[image_id]["converged"]
        if progress:
            progress(iteration, active, figures)
        active = [image_id for image_id in active if not figures[image_id]["converged"]]
    return state


def history(area: WorkArea, image_id: str, iterations: int) -> list[dict]:
    return [read_json(area.stats(image_id, i)) for i in range(1, iterations + 1)]


def print_progress(max_iter: int, stream=sys.stderr):
    """A progress callback printing one line per iteration (to stderr)."""
    start = time.perf_counter()

    def progress(iteration, active, figures):
        shifts = [f["max_shift"] for f in figures.values()]
        done = sum(f["converged"] for f in figures.values())
        print(
            f"iteration {iteration}/{max_iter}: {len(active)} image(s) in the job, {done} converged, "
            f"largest shift {max(shifts):.3f}, {time.perf_counter() - start:.1f}s",
            file=stream,
            flush=True,
        )

    return progress
