"""Stage 5, publish: the run's output folder (images, JSON figures, report) appears all at once.

Everything is first written into a staging folder beside the final one; publishing swaps it in
(storage.publish_folder), so a reader sees the previous complete folder or the new complete one,
never half a run (and locally never none). Each run has its own folder ``<output>/<run key>``
(run.run_key: unique per run id); ``<output>/latest`` names the newest. Nothing that is not ours
is replaced: a run folder without summary.json, a folder published by another run (its
summary.json names another DAG or run id, unless the run's ``replace_published`` param says so),
or a ``latest`` that is not ours stops the publication with PublishError.

The output may be local or ``hdfs://`` (kmeans_ops.paths.filesystem chooses, once, by the output's
URI; every function here works on either through the same few filesystem operations):

- **Local**: ``latest`` is a symlink to the newest run folder (replaced in one rename), and only
  a symlink is ever replaced. The swap exchanges the two folders in one step where Linux can.
- **HDFS**: a folder rename is atomic but never replaces anything, so the old run folder is
  renamed aside (``.old-<key>-<hex>``), the staging folder renamed to the final name and the old
  one deleted: a reader sees the old complete folder or the new one, or between the two renames
  none. A publication killed between them is repaired by the next one (the old folder is put
  back first). HDFS has no usable symlinks (disabled by default), so ``latest`` is a small file,
  ``<output>/latest``, holding the newest run key and a newline (``<output>/<that key>/`` is the
  folder), written to a temporary name and renamed over the old one in one step (WebHDFS rename
  with OVERWRITE). Only such a file (one line: a folder-safe name, letters, digits, ``.``, ``_``
  and ``-``) is ever replaced: a folder or any other file named ``latest`` stops the
  publication. The report is rendered into a local temporary folder (with the run's images
  downloaded beside it for its thumbnails) and uploaded.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid

from .errors import shown
from .paths import filesystem
from .storage import OLD_PREFIX, json_bytes, old_folders, publish_folder

STAGING_PREFIX = ".staging-"
#: Every published run folder holds it: a folder without it is never replaced.
PUBLISHED_MARKER = "summary.json"
REPORT = "report.html"
#: The newest run: a symlink (local) or a file holding its run key (HDFS).
LATEST = "latest"
#: Output stems an image may not take: ``summary`` would write the run's summary.json.
RESERVED_STEMS = ("summary",)
#: Largest summary.json read to see which run published a folder.
_SUMMARY_MAX_BYTES = 64 << 20
#: What a ``latest`` file written here holds: one run key (folder-safe, as run.run_key makes them)
#: and a newline.
_LATEST_FILE = re.compile(rb"[A-Za-z0-9._-]{1,255}\n")
_LATEST_MAX_BYTES = 256


class PublishError(RuntimeError):
    """Publishing would replace something that is not ours; the message names it."""


def staging_dir(output_root: str, key: str) -> str:
    return filesystem(output_root).join(output_root, STAGING_PREFIX + key)


def final_dir(output_root: str, key: str) -> str:
    return filesystem(output_root).join(output_root, key)


def read_summary(folder: str) -> dict | None:
    """A folder's summary.json as a dict, or None when it cannot be read (missing, too big, not a
    JSON object)."""
    fs = filesystem(folder)
    path = fs.join(folder, PUBLISHED_MARKER)
    try:
        st = fs.stat(path)
        if st is None or st.is_dir or st.size > _SUMMARY_MAX_BYTES:
            return None
        summary = json.loads(fs.read_bytes(path))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def publisher(folder: str) -> dict | None:
    """``{"dag_id", "run_id", "published_at"}`` from a published folder's summary.json, or None when
    it cannot be read (missing, too big, not JSON of the expected shape)."""
    try:
        run = (read_summary(folder) or {})["run"]
        return {"dag_id": run.get("dag_id"), "run_id": run.get("run_id"), "published_at": run.get("published_at")}
    except (KeyError, AttributeError):
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
    (which is then moved away). The old folders a killed publication left beside a complete one
    (``.old-<key>-*``) are removed."""
    fs = filesystem(output_root)
    staging, final = staging_dir(output_root, key), final_dir(output_root, key)
    if fs.is_folder(staging) and swapped_out(output_root, key):
        aside = fs.join(output_root, f"{OLD_PREFIX}{key}-{uuid.uuid4().hex[:12]}")
        fs.rename(staging, aside)
        fs.delete(aside)
    done = not fs.is_folder(staging) and fs.is_folder(final)
    if done:
        for leftover in old_folders(final, fs):
            fs.delete(leftover)
    return done


def publish(output_root: str, key: str, results: list[dict], failures: list[dict], run: dict,
            replace: bool = False) -> str:
    """Write summary.json and report.html into the staging folder, then publish it. Returns the
    published folder. ``run`` names the run (``dag_id``, ``run_id``); ``replace``: a folder
    published by another run may be replaced. ``output_root`` local or ``hdfs://``."""
    from .report import write_report

    fs = filesystem(output_root)
    staging = staging_dir(output_root, key)
    fs.makedirs(staging)
    summary = {
        "run": {**run, "published_at": time.time()},
        "images": [{k: v for k, v in r.items() if k not in ("history", "thumbnails")} for r in results],
        "failures": failures,
    }
    fs.write_bytes(fs.join(staging, PUBLISHED_MARKER), json_bytes(summary))
    with fs.working_copy(staging, fetch=_report_images(results)) as local:  # the report reads them there
        write_report(fs.join(local, REPORT), results, failures, run)
    final = final_dir(output_root, key)
    check_publishable(output_root, key, run.get("run_id"), run.get("dag_id"), replace)
    publish_folder(staging, final)
    _point_latest(fs, output_root, key)
    return final


def _report_images(results: list[dict]) -> list[str]:
    """The names of the output images the report shows (beside it, in the run folder); none for an
    image whose thumbnails were made where it was reconstructed (on a node of the cluster)."""
    return sorted({str(r["output"]).rsplit("/", 1)[-1] for r in results if isinstance(r.get("output"), str)
                   and r["output"] and not isinstance(r.get("thumbnails"), dict)})


def _point_latest(fs, output_root: str, key: str) -> None:
    """``<output>/latest`` names run ``key``, replaced in one step: a symlink to its folder where
    the filesystem has symlinks, else a file holding the key."""
    link = fs.join(output_root, LATEST)
    if not fs.symlinks:
        fs.write_bytes(link, key.encode("utf-8") + b"\n")
        return
    tmp_link = fs.join(output_root, f".latest-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.symlink(key, tmp_link)
    try:
        os.replace(tmp_link, link)
    except BaseException:
        os.unlink(tmp_link)
        raise


def _latest_is_ours(fs, link: str) -> bool:
    """Whether an existing ``latest`` is what _point_latest writes: a symlink, or on a filesystem
    without symlinks a file of a few bytes holding one run key (never quoted)."""
    if fs.symlinks:
        return os.path.islink(link)
    st = fs.stat(link)
    return (st is not None and not st.is_dir and st.size <= _LATEST_MAX_BYTES
            and _LATEST_FILE.fullmatch(fs.read_bytes(link)) is not None)


def check_publishable(output_root: str, key: str, run_id: str | None = None, dag_id: str | None = None,
                      replace: bool = False) -> None:
    """PublishError unless publishing run ``key`` replaces only what is ours: its own earlier
    folder (a re-run of the same DAG and run id; with ``replace``, any published run's folder) and
    ``latest`` (a symlink; on HDFS a file holding a run key)."""
    fs = filesystem(output_root)
    final = final_dir(output_root, key)
    if fs.exists(final) and not is_published(final):
        raise PublishError(f"{shown(final)} exists and is not a published run (no {PUBLISHED_MARKER}): not replaced; "
                           f"move it aside or choose another output folder")
    if run_id is not None and fs.exists(final) and not replace:
        owner = publisher(final)
        if owner is None or (owner["run_id"], owner["dag_id"]) != (run_id, dag_id):
            raise PublishError(f"{shown(final)} was published by another run: not replaced; set the param "
                               f"replace_published to replace it, or choose another output folder")
    link = fs.join(output_root, LATEST)
    if fs.exists(link) and not _latest_is_ours(fs, link):
        what = "a symlink" if fs.symlinks else "a file naming the newest run"
        raise PublishError(f"{shown(link)} exists and is not {what}: not replaced; move it aside so that "
                           f"'latest' can point to the newest run")


def is_published(folder: str) -> bool:
    """A folder published by this module (it holds summary.json), not a user's folder (nor a
    symlink to one)."""
    fs = filesystem(folder)
    return fs.is_folder(folder) and fs.is_file(fs.join(folder, PUBLISHED_MARKER))


def published_by(folder: str, dag_id: str, run_id: str) -> bool:
    """Whether ``folder`` is a published run folder whose summary.json names that DAG and run id."""
    owner = publisher(folder) if is_published(folder) else None
    return owner is not None and owner["dag_id"] == dag_id and owner["run_id"] == run_id
