"""Stage 5, publish: the run's output folder (images, JSON figures, report) appears all at once.

Everything is first written into a staging folder beside the final one; publishing swaps it in
(storage.publish_folder), so a reader sees the previous complete folder or the new complete one,
never half a run and never none. Each run has its own folder ``<output>/<run key>`` (run.run_key:
unique per run id); ``<output>/latest`` is a symlink to the newest. Nothing that is not ours is
replaced: a run folder without summary.json, a folder published by another run (its summary.json
names another DAG or run id, unless the run's ``replace_published`` param says so), or a
``latest`` that is not a symlink stops the publication with PublishError.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid

from .errors import shown
from .storage import OLD_PREFIX, publish_folder, write_json

STAGING_PREFIX = ".staging-"
#: Every published run folder holds it: a folder without it is never replaced.
PUBLISHED_MARKER = "summary.json"
REPORT = "report.html"
#: Output stems an image may not take: ``summary`` would write the run's summary.json.
RESERVED_STEMS = ("summary",)
#: Largest summary.json read to see which run published a folder.
_SUMMARY_MAX_BYTES = 64 << 20


class PublishError(RuntimeError):
    """Publishing would replace something that is not ours; the message names it."""


def staging_dir(output_root: str, key: str) -> str:
    return os.path.join(output_root, STAGING_PREFIX + key)


def final_dir(output_root: str, key: str) -> str:
    return os.path.join(output_root, key)


def publisher(folder: str) -> dict | None:
    """``{"dag_id", "run_id", "published_at"}`` from a published folder's summary.json, or None when
    it cannot be read (missing, too big, not JSON of the expected shape)."""
    path = os.path.join(folder, PUBLISHED_MARKER)
    try:
        if os.path.getsize(path) > _SUMMARY_MAX_BYTES:
            return None
        with open(path, encoding="utf-8") as handle:
            run = json.load(handle).get("run")
        return {"dag_id": run.get("dag_id"), "run_id": run.get("run_id"), "published_at": run.get("published_at")}
    except (OSError, ValueError, AttributeError):
        return None


def swapped_out(output_root: str, key: str) -> bool:
    """Whether the staging folder holds the *old* run folder: a publication swapped the folders and
    was killed before the old one was moved away (its summary is older than the final one's)."""
    old, new = publisher(staging_dir(output_root, key)), publisher(final_dir(output_root, key))
    if not old or not new:
        return False
    try:
        return float(old["published_at"]) < float(new["published_at"])
    except (TypeError, ValueError):
        return False


def already_published(output_root: str, key: str) -> bool:
    """Whether run ``key``'s publication is complete (a cleared and re-run publish task has nothing
    to do): no staging folder is left, or only the old folder a killed swap left in its place
    (which is then moved away)."""
    staging, final = staging_dir(output_root, key), final_dir(output_root, key)
    if os.path.isdir(staging) and swapped_out(output_root, key):
        aside = os.path.join(output_root, f"{OLD_PREFIX}{key}-{uuid.uuid4().hex[:12]}")
        os.rename(staging, aside)
        shutil.rmtree(aside, ignore_errors=True)
    return not os.path.isdir(staging) and os.path.isdir(final)


def publish(output_root: str, key: str, results: list[dict], failures: list[dict], run: dict,
            replace: bool = False) -> str:
    """Write summary.json and report.html into the staging folder, then publish it. Returns the
    published folder. ``run`` names the run (``dag_id``, ``run_id``); ``replace``: a folder
    published by another run may be replaced."""
    from .report import write_report

    staging = staging_dir(output_root, key)
    os.makedirs(staging, exist_ok=True)
    summary = {
        "run": {**run, "published_at": time.time()},
        "images": [{k: v for k, v in r.items() if k != "history"} for r in results],
        "failures": failures,
    }
    write_json(os.path.join(staging, PUBLISHED_MARKER), summary)
    write_report(os.path.join(staging, REPORT), results, failures, run)
    final = final_dir(output_root, key)
    check_publishable(output_root, key, run.get("run_id"), run.get("dag_id"), replace)
    publish_folder(staging, final)
    link = os.path.join(output_root, "latest")
    tmp_link = os.path.join(output_root, f".latest-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.symlink(os.path.basename(final), tmp_link)
    try:
        os.replace(tmp_link, link)
    except BaseException:
        os.unlink(tmp_link)
        raise
    return final


def check_publishable(output_root: str, key: str, run_id: str | None = None, dag_id: str | None = None,
                      replace: bool = False) -> None:
    """PublishError unless publishing run ``key`` replaces only what is ours: its own earlier
    folder (a re-run of the same DAG and run id; with ``replace``, any published run's folder) and
    the ``latest`` symlink."""
    final = final_dir(output_root, key)
    if os.path.lexists(final) and not is_published(final):
        raise PublishError(f"{shown(final)} exists and is not a published run (no {PUBLISHED_MARKER}): not replaced; "
                           f"move it aside or choose another output folder")
    if run_id is not None and os.path.lexists(final) and not replace:
        owner = publisher(final)
        if owner is None or (owner["run_id"], owner["dag_id"]) != (run_id, dag_id):
            raise PublishError(f"{shown(final)} was published by another run: not replaced; set the param "
                               f"replace_published to replace it, or choose another output folder")
    link = os.path.join(output_root, "latest")
    if os.path.lexists(link) and not os.path.islink(link):
        raise PublishError(f"{shown(link)} exists and is not a symlink: not replaced; move it aside so that "
                           f"'latest' can point to the newest run")


def is_published(folder: str) -> bool:
    """A folder published by this module (it holds summary.json), not a user's folder."""
    return os.path.isdir(folder) and not os.path.islink(folder) and os.path.isfile(os.path.join(folder, PUBLISHED_MARKER))


def published_by(folder: str, dag_id: str, run_id: str) -> bool:
    """Whether ``folder`` is a published run folder whose summary.json names that DAG and run id."""
    owner = publisher(folder) if is_published(folder) else None
    return owner is not None and owner["dag_id"] == dag_id and owner["run_id"] == run_id
