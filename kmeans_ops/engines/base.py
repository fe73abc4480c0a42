"""The one interface every engine implements (as mrjob's runners share MRJobRunner).

An engine runs one K-means iteration (one MapReduce job) for a batch of images. The driver, the
CLI and the Airflow operators use engines only through this class: nothing probes for methods.

Every job goes through :meth:`Engine.submit` (start it), :meth:`Engine.wait` (block until it is
over), :meth:`Engine.retry` (a second attempt, if the engine makes one) and :meth:`Engine.collect`
(its result); :meth:`Engine.run` chains them. A job is a small JSON-able dict, so an Airflow task
can submit it, defer while it runs (the triggerer polls YARN) and collect it in another process.
The embedded engine does the work inside ``submit``: its job is done when returned.
"""

from __future__ import annotations

import abc
from types import MappingProxyType
from typing import Mapping

from ..workarea import WorkArea


class Engine(abc.ABC):
    """What kmeans_ops.driver, kmeans_ops.cli and the operators call.

    An engine may keep state between the iterations of a run (the embedded engine keeps each
    table's prepared colours and its Hamerly bounds); the state never changes a result, only how
    fast it comes: every engine gives the same centroids from the same files.
    """

    #: "local" or "hadoop": the ``engine`` figure of the results.
    name: str = ""
    #: The last job's ``application_id``, ``job_id``, ``tracking_url`` and ``framework`` (for the
    #: YARN link of an iteration task); empty for an engine that submits no jobs.
    last_job: Mapping = MappingProxyType({})
    #: Whether a job of this engine runs in the calling process, done when submitted (the embedded
    #: engine): a DAG task may then run several iterations back to back, keeping the engine's state
    #: between them (the DAG's ``iterations_per_task``). False (the Hadoop engine: jobs on YARN):
    #: one iteration, one job per task, so a deferrable task frees its worker slot for each job.
    in_process: bool = False

    @abc.abstractmethod
    def iterate(self, area: WorkArea, image_ids: list[str], iteration: int, delta: float) -> dict[str, dict]:
        """One job: read each image's points file and ``clusters-(iteration-1)``, write
        ``clusters-iteration`` and ``stats-iteration`` (workarea.py); return ``{image id: figures}``
        (``sse``, ``max_shift``, ``reseeded``, ``converged``, ``iteration``)."""

    @abc.abstractmethod
    def stage(self, local: WorkArea, key: str) -> WorkArea:
        """Put a work area written by ingest where the engine reads it; returns that area."""

    @abc.abstractmethod
    def fetch(self, area: WorkArea, image_id: str, local_root: str) -> WorkArea:
        """Bring one image's files back to the local work area ``local_root`` for reconstruction."""

    @abc.abstractmethod
    def discard(self, area: WorkArea) -> None:
        """Remove a run's work area."""

    # ------------------------------------------------------------ jobs
    #: Stages that run as jobs on the cluster where the data lives (beyond ``iterate``): "ingest"
    #: and "reconstruct" with the Hadoop engine, for images in HDFS. Empty: they run in process.
    remote_stages: tuple[str, ...] = ()

    def submit(self, stage: str, **args) -> dict:
        """Start ``stage`` (``"iterate"``: the keywords of :meth:`iterate`) and return its job. The
        default runs it now: the job is ``{"stage", "done": True, "result"}``."""
        return {"stage": stage, "done": True, "result": getattr(self, stage)(**args)}

    def wait(self, job: dict, say=None) -> dict:
        """Block until ``job`` is over (``say``: where progress lines go); returns the job."""
        return job

    def retry(self, job: dict) -> dict | None:
        """A new job to wait for instead of a failed ``job``, or None (the default: no retry)."""
        return None

    def collect(self, job: dict):
        """The result of a job that is over; raises the engine's error when it failed."""
        return job["result"]

    def run(self, stage: str, say=None, **args):
        """Submit, wait for (and retry) a job of ``stage``, and return its result."""
        job = self.wait(self.submit(stage, **args), say)
        while (again := self.retry(job)) is not None:
            job = self.wait(again, say)
        return self.collect(job)

    def prepare(self) -> None:
        """A run of this process is about to give the engine images to iterate (the CLI): start
        loading what iterating needs, in the background. The default loads nothing."""

    def release(self, area: WorkArea, image_ids: list[str]) -> None:
        """The run iterates ``image_ids`` no more (converged or at max_iter): an engine that keeps
        their tables or bounds in memory drops them. The default keeps nothing."""

    def remember(self, area: WorkArea, image_id: str, table) -> None:
        """Offered the colour table just written to ``area``'s points file of ``image_id`` (or a
        shared palette's union), so an engine that keeps tables in memory need not parse the file
        again. Engines that read their data elsewhere ignore it (the default)."""
