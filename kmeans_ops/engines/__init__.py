"""Engines run one K-means iteration (one MapReduce job) for a batch of images.

The interface (:class:`~kmeans_ops.engines.base.Engine`, which both engines subclass) is small:

- ``submit(stage, **args) -> job``, ``wait(job)``, ``retry(job)``, ``collect(job)`` and ``run(stage,
  **args)``: every job (a small JSON-able dict, so an Airflow task can defer while it runs); the
  embedded engine does the work inside ``submit``; ``remote_stages``: the stages besides
  ``iterate`` the engine runs where the data is ("ingest", "reconstruct" for the Hadoop engine);
- ``iterate(area, image_ids, iteration, delta) -> {image id: figures}``: one job; reads each image's
  points file and ``clusters-(iteration-1)``, writes ``clusters-iteration`` and
  ``stats-iteration`` (workarea.py), returns the figures;
- ``stage(local_area, key) -> area``: put a work area written by ingest where the engine reads it;
- ``fetch(area, image_id, local_root) -> local area``: bring one image's files back for reconstruction;
- ``discard(area)``: remove a run's work area;
- ``remember(area, image_id, table)``: the table just written to a points file, for an engine that
  keeps tables in memory (the embedded one), and ``release(area, image_ids)`` when the driver
  iterates them no more; ``prepare()`` before a run of this process (the CLI's); ``last_job``: the
  last job's YARN ids and URL, if any; ``in_process``: whether its jobs run in the calling process
  (the embedded engine: a DAG task may then run several iterations, ``iterations_per_task``).

Every engine runs the map, combine and reduce functions of kmeans_ops.mapreduce.
"""

from __future__ import annotations

from .base import Engine

ENGINES = ("local", "hadoop")


def get_engine(name: str, **options) -> Engine:
    """The engine called ``name`` ("local" or "hadoop")."""
    if name == "local":
        from .local import EmbeddedEngine

        return EmbeddedEngine(**options)
    if name == "hadoop":
        from .hadoop import HadoopEngine

        return HadoopEngine(**options)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")
