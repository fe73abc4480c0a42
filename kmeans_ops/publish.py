"""Stage 5, publish: the run's output folder (images, JSON figures, report) appears all at once.

Everything is first written into a staging folder beside the final one; publishing is a rename,
so a reader sees the previous complete folder or the new complete one, never half a run. Each run
has its own folder ``<output>/<run key>``; ``<output>/latest`` is a symlink to the newest. Nothing
that is not ours is replaced: a run folder without summary.json, or a ``latest`` that is not a
symlink, stops the publication with PublishError.
"""

from __future__ import annotations

import os

from .errors import shown
from .storage import publish_folder, write_json

STAGING_PREFIX = ".staging-"
#: Every published run folder holds it: a folder without it is never replaced.
PUBLISHED_MARKER = "summary.json"


class PublishError(RuntimeError):
    """Publishing would replace something that is not ours; the message names it."""


def staging_dir(output_root: str, key: str) -> str:
    return os.path.join(output_root, STAGING_PREFIX + key)


def final_dir(output_root: str, key: str) -> str:
    return os.path.join(output_root, key)


def publish(output_root: str, key: str, results: list[dict], failures: list[dict], run: dict) -> str:
    """Write summary.json and report.html into the staging folder, then publish it. Returns the
    published folder."""
    from .report import write_report

    staging = staging_dir(output_root, key)
    os.makedirs(staging, exist_ok=True)
    summary = {
        "run": run,
        "images": [{k: v for k, v in r.items() if k != "history"} for r in results],
        "failures": failures,
    }
    write_json(os.path.join(staging, PUBLISHED_MARKER), summary)
    write_report(os.path.join(staging, "report.html"), results, failures, run)
    final = final_dir(output_root, key)
    check_publishable(output_root, key)
    publish_folder(staging, final)
    link = os.path.join(output_root, "latest")
    tmp_link = os.path.join(output_root, f".latest-{os.getpid()}")
    if os.path.lexists(tmp_link):
        os.unlink(tmp_link)
    os.symlink(os.path.basename(final), tmp_link)
    os.replace(tmp_link, link)
    return final


def check_publishable(output_root: str, key: str) -> None:
    """PublishError unless publishing run ``key`` replaces only what is ours: its own earlier
    folder (a re-run) and the ``latest`` symlink."""
    final = final_dir(output_root, key)
    if os.path.lexists(final) and not is_published(final):
        raise PublishError(f"{shown(final)} exists and is not a published run (no {PUBLISHED_MARKER}): not replaced; "
                           f"move it aside or choose another output folder")
    link = os.path.join(output_root, "latest")
    if os.path.lexists(link) and not os.path.islink(link):
        raise PublishError(f"{shown(link)} exists and is not a symlink: not replaced; move it aside so that "
                           f"'latest' can point to the newest run")


def is_published(folder: str) -> bool:
    """A folder published by this module (it holds summary.json), not a user's folder."""
    return os.path.isdir(folder) and not os.path.islink(folder) and os.path.isfile(os.path.join(folder, PUBLISHED_MARKER))
