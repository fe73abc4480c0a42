"""Stage 5, publish: the run's output folder (images, JSON figures, report) appears all at once.

Everything is first written into a staging folder beside the final one; publishing is a rename,
so a reader sees the previous complete folder or the new complete one, never half a run. Each run
has its own folder ``<output>/<run key>``; ``<output>/latest`` is a symlink to the newest.
"""

from __future__ import annotations

import os

from .storage import publish_folder, write_json

STAGING_PREFIX = ".staging-"


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
    write_json(os.path.join(staging, "summary.json"), summary)
    write_report(os.path.join(staging, "report.html"), results, failures, run)
    final = final_dir(output_root, key)
    publish_folder(staging, final)
    link = os.path.join(output_root, "latest")
    tmp_link = os.path.join(output_root, f".latest-{os.getpid()}")
    if os.path.lexists(tmp_link):
        os.unlink(tmp_link)
    os.symlink(os.path.basename(final), tmp_link)
    os.replace(tmp_link, link)
    return final
