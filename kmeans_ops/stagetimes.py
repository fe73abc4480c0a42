"""Where a DAG run's time went: its task instances' own timestamps, grouped into the pipeline's
stages, each stage's time split into **waiting** (no task of the stage running: its tasks being
scheduled, queued or started by Airflow) and **running** (some task of the stage executing: the
task's process from its start date to its end date, the work and the task's own start-up).

A task instance here is a dict: ``task_id``, ``map_index``, ``state`` and, in epoch seconds (or
None), ``scheduled`` (it became ready to run), ``queued`` (the executor got it), ``start`` and ``end``.
The Airflow side reads them (kmeans_plugin.timings, bench/bench_scheduler.py); this module only
counts, so the report and the benchmark give the same figures.
"""

from __future__ import annotations

import re

_ITERATION = re.compile(r"iteration_\d+$")
#: Tasks after publication: not part of the run the report describes.
AFTER_PUBLICATION = ("cleanup",)
#: States of task instances that did not run (a skipped one has a start and end date, the same).
NOT_RUN = ("skipped", "removed", "upstream_failed")


def stage_of(task_id: str) -> str:
    """The stage of a task: its top-level task or group, every ``iteration_NN`` group being the
    one stage "iterations" (``iteration_03.mapreduce`` -> ``iterations``, ``ingest`` -> ``ingest``)."""
    group = task_id.split(".", 1)[0]
    return "iterations" if _ITERATION.match(group) else group


def union_seconds(intervals) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, None
    for lo, hi in sorted(intervals):
        if reach is None or lo > reach:
            total += hi - lo
            reach = hi
        elif hi > reach:
            total += hi - reach
            reach = hi
    return total


def breakdown(task_instances: list[dict], started: float, now: float) -> list[dict]:
    """The run's stages in the order they started, from ``started`` (the DAG run's start) to
    ``now`` (a task still running, such as the publish task asking, ends now).

    A stage's span runs from the end of the stage before it (the run's start for the first) to the
    end of its last task, so the spans add up to the run's time so far; ``running`` is the time
    some task of the stage ran (the union of their start -> end), ``waiting`` the rest of its span
    (waiting + running = seconds). Per task, summed over the stage's tasks: ``scheduled_to_queued``
    (the scheduler) and ``queued_to_start`` (the executor and the worker starting its process).
    Task instances that did not run (skipped iterations) and the tasks after publication are left
    out. Returns ``[{"name", "seconds", "waiting", "running", "tasks", "scheduled_to_queued",
    "queued_to_start"}]``.
    """
    groups: dict[str, list[dict]] = {}
    for ti in task_instances:
        if ti.get("start") is None or ti.get("state") in NOT_RUN or stage_of(ti["task_id"]) in AFTER_PUBLICATION:
            continue
        groups.setdefault(stage_of(ti["task_id"]), []).append(ti)
    stages, begin = [], started
    for name, tis in sorted(groups.items(), key=lambda item: min(ti["start"] for ti in item[1])):
        runs = [(max(ti["start"], begin), min(ti["end"] if ti.get("end") is not None else now, now)) for ti in tis]
        end = max(hi for _, hi in runs)
        seconds = max(end - begin, 0.0)
        running = min(union_seconds([(lo, hi) for lo, hi in runs if hi > lo]), seconds)
        stages.append({
            "name": name, "seconds": seconds, "waiting": seconds - running, "running": running, "tasks": len(tis),
            "scheduled_to_queued": sum(_gap(ti.get("scheduled"), ti.get("queued")) for ti in tis),
            "queued_to_start": sum(_gap(ti.get("queued"), ti["start"]) for ti in tis)})
        begin = max(begin, end)
    return stages


def _gap(earlier: float | None, later: float | None) -> float:
    return max(later - earlier, 0.0) if earlier is not None and later is not None else 0.0
