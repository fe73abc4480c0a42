"""Waiting on a YARN application in the triggerer, so no worker slot is held while YARN works.

A deferrable task (kmeans_plugin.operators, ``deferrable=True``) submits its Hadoop job, which
returns at once (``-background``), then defers on :class:`YarnApplicationTrigger`. The triggerer
polls the ResourceManager's REST API (``/ws/v1/cluster/apps/{id}``) with an asynchronous HTTP
client, logs a progress line every ``KMEANS_YARN_PROGRESS_S`` seconds and at each change of state
(these lines go to the task's log, beside the worker's), and fires one event when the application
is over: ``{"final": {"state", "finalStatus", "diagnostics", "elapsedTime"}, "application_id"}``,
or ``{"error": <one line>, "application_id"}`` when the ResourceManager stopped answering or the
job overran its time (it is then killed). The task then resumes on a worker and collects the job.

An application that ended without success is reported no sooner than ``KMEANS_YARN_SETTLE_S``
seconds (10) after the trigger started: a task resumed within a second or two of its deferral can
be failed by Airflow's scheduler as "state changed externally" when the deferring process's exit
reaches it late (apache/airflow#72716, open; seen here when a test killed each job at once). A
job that succeeded is reported at once: every YARN job takes several seconds, a failure may not.

The same state and progress rules as the blocking wait of the CLI (kmeans_ops.engines.yarn.wait):
:func:`~kmeans_ops.engines.yarn.state_of`, :func:`~kmeans_ops.engines.yarn.progress_of` and
:func:`~kmeans_ops.engines.yarn.summary_of`. The trigger only reads (it kills an application only
when the job overran, or when a person marks the deferred task failed or clears it): running it
twice, as after a triggerer failover, gives the same event.

The triggerer imports this module by its class path from ``sys.path`` (Airflow puts the plugins
folder there), not from a DAG bundle; it needs kmeans_ops importable too (PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import httpx
from airflow.triggers.base import BaseTrigger, TriggerEvent

from kmeans_ops import settings
from kmeans_ops.engines import yarn

#: Polls in a row that may fail (the ResourceManager restarting) before the trigger gives up, as
#: the blocking wait does (kmeans_ops.engines.yarn.wait); the trigger waits longer between them.
MAX_MISSES = 20
#: What the trigger asks YARN for, and keeps, of a finished application.
FINAL_KEYS = ("state", "finalStatus", "diagnostics", "elapsedTime")


class YarnApplicationTrigger(BaseTrigger):
    """Fires once the YARN application ``application_id`` of ResourceManager ``rm`` is over.

    :param rm: the ResourceManager's web address (``http://host:8088``), as the job names it.
    :param application_id: the application to follow.
    :param what: what the job does, for the log lines (``iteration 3``, ``ingest of 4 image(s)``).
    :param submitted_at: when it was submitted (epoch seconds), for the elapsed time logged.
    :param deadline: epoch seconds after which a still running application is killed and the
        trigger fires an error (the job's ``KMEANS_HADOOP_TIMEOUT``); None: no deadline.
    :param poll_seconds: seconds between two polls (default ``KMEANS_YARN_POLL_MS``).
    :param progress_seconds: seconds between two progress lines (default ``KMEANS_YARN_PROGRESS_S``).
    :param max_misses: failed polls in a row tolerated before the trigger fires an error.
    :param settle_seconds: the end of an application that did not succeed is reported no sooner
        than this after the trigger started (default ``KMEANS_YARN_SETTLE_S``; see the module).
    """

    def __init__(self, rm: str, application_id: str, what: str, submitted_at: float | None = None,
                 deadline: float | None = None, poll_seconds: float | None = None,
                 progress_seconds: float | None = None, max_misses: int = MAX_MISSES,
                 settle_seconds: float | None = None):
        super().__init__()
        self.rm = rm
        self.application_id = application_id
        self.what = what
        self.submitted_at = submitted_at
        self.deadline = deadline
        self.poll_seconds = poll_seconds
        self.progress_seconds = progress_seconds
        self.max_misses = max_misses
        self.settle_seconds = settle_seconds

    @classmethod
    def for_job(cls, job: dict, timeout: float) -> "YarnApplicationTrigger":
        """The trigger following a job of kmeans_ops.engines (``rm``, ``application_id``, ``what``,
        ``submitted_at``) that may run for ``timeout`` seconds; intervals from this side's settings."""
        return cls(rm=job["rm"], application_id=job["application_id"], what=job["what"],
                   submitted_at=job.get("submitted_at"), deadline=(job.get("submitted_at") or time.time()) + timeout,
                   poll_seconds=settings.yarn_poll_seconds(), progress_seconds=settings.yarn_progress_seconds(),
                   settle_seconds=settings.yarn_settle_seconds())

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "rm": self.rm, "application_id": self.application_id, "what": self.what,
            "submitted_at": self.submitted_at, "deadline": self.deadline, "poll_seconds": self.poll_seconds,
            "progress_seconds": self.progress_seconds, "max_misses": self.max_misses,
            "settle_seconds": self.settle_seconds})

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=10, headers={"Accept": "application/json"})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        poll = self.poll_seconds if self.poll_seconds is not None else settings.yarn_poll_seconds()
        every = self.progress_seconds if self.progress_seconds is not None else settings.yarn_progress_seconds()
        settle = self.settle_seconds if self.settle_seconds is not None else settings.yarn_settle_seconds()
        app_id, misses, shown, shown_at, started = self.application_id, 0, None, 0.0, time.monotonic()
        async with self._client() as client:
            while True:
                try:
                    response = await client.get(yarn.app_url(self.rm, app_id))
                    response.raise_for_status()
                    app = response.json()["app"]
                    misses = 0
                except Exception as err:  # noqa: BLE001 - the RM restarting: a few misses are tolerated
                    misses += 1
                    if misses > self.max_misses:
                        yield self._error(_unanswered(self.rm, app_id, err))
                        return
                    self.log.warning("%s: %s: no answer from the ResourceManager (%s), asking again", self.what,
                                     app_id, type(err).__name__)
                    await asyncio.sleep(max(poll, 1.0) * min(misses, 5))  # 1, 2, ... 5 s: about 90 s in all
                    continue
                state = yarn.state_of(app)
                if state != "running":
                    self.log.info("%s: %s %s after %s", self.what, app_id, yarn.summary_of(app), self._elapsed())
                    if state == "failed":  # see the module: not within seconds of the deferral
                        await asyncio.sleep(max(0.0, started + settle - time.monotonic()))
                    yield TriggerEvent({"final": {k: app.get(k) for k in FINAL_KEYS}, "application_id": app_id})
                    return
                now = time.monotonic()
                if app.get("state") != shown or now - shown_at >= every:
                    jobs = await self._jobs(client) if app.get("state") == "RUNNING" else None
                    self.log.info("%s: %s %s", self.what, app_id, yarn.progress_of(app, jobs))
                    shown, shown_at = app.get("state"), now
                if self.deadline is not None and time.time() > self.deadline:
                    await self._kill(client)
                    limit = self.deadline - (self.submitted_at or self.deadline)
                    yield self._error(f"the Hadoop job {app_id} did not finish in {limit:.0f}s; it was killed")
                    return
                await asyncio.sleep(poll)

    def _error(self, message: str) -> TriggerEvent:
        self.log.error("%s: %s", self.what, message)
        return TriggerEvent({"error": f"{self.what}: {message}", "application_id": self.application_id})

    def _elapsed(self) -> str:
        return f"{time.time() - self.submitted_at:.1f} s" if self.submitted_at else "(unknown time)"

    async def _jobs(self, client) -> dict | None:
        """The ApplicationMaster's jobs (map and reduce percentages), or None while it does not answer."""
        try:
            response = await client.get(yarn.progress_url(self.rm, self.application_id))
            response.raise_for_status()
            return response.json()
        except Exception:  # noqa: BLE001 - no AM yet, or the app is over: the RM's own progress is used
            return None

    async def _kill(self, client) -> None:
        """Ask the ResourceManager to kill the application (best effort)."""
        try:
            response = await client.put(f"{yarn.app_url(self.rm, self.application_id)}/state", json={"state": "KILLED"})
            response.raise_for_status()
            self.log.warning("%s: asked %s to kill %s", self.what, self.rm, self.application_id)
        except Exception as err:  # noqa: BLE001
            self.log.warning("%s: could not ask %s to kill %s: %s", self.what, self.rm, self.application_id, err)

    async def on_kill(self) -> None:
        """A person marked the deferred task failed or cleared it: the application is killed too."""
        async with self._client() as client:
            await self._kill(client)


def _unanswered(rm: str, application_id: str, err: Exception) -> str:
    """The one line of a trigger that gave up asking ``rm`` about ``application_id``."""
    if isinstance(err, httpx.HTTPStatusError) and err.response.status_code == 404:
        return f"the ResourceManager {rm} does not know {application_id} (HTTP 404)"
    return f"the ResourceManager {rm} stopped answering about {application_id}: {' '.join(str(err).split())[:200]}"
