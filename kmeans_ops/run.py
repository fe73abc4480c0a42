"""A pipeline run: its inputs, ids, work area and output folders, and the batches of each job.

Everything here is small and JSON-friendly: the DAG passes these values between tasks by XCom
(paths and ids, never pixels).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from urllib.parse import quote

from .errors import InputError


def run_key(run_id: str) -> str:
    """A folder-safe name for a run id (Airflow run ids hold ':' and '+'), unique per run id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    return f"{safe[:80]}-{hashlib.sha1(run_id.encode()).hexdigest()[:6]}"


def output_stems(paths: list[str]) -> list[str]:
    """One output stem per input: the file name without extension, made unique with -2, -3, ..."""
    used: set[str] = set()
    stems = []
    for path in paths:
        base = os.path.splitext(os.path.basename(path))[0] or "image"
        stem, n = base, 1
        while stem.lower() in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def image_id_of(stem: str) -> str:
    """A whitespace-free, ASCII id for the files of the work area and the MapReduce records."""
    return quote(stem.encode("utf-8", "surrogateescape"), safe="")


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files, folders and glob patterns -> the image paths they name (see ingest.find_images).

    Local paths, or ``hdfs://`` URIs (listed through WebHDFS; their images are downloaded when
    ingested). A pattern that matches nothing, or a path that does not exist, raises InputError.
    """
    from .hdfs import is_hdfs
    from .ingest import IMAGE_EXTENSIONS, find_images

    expanded: list[str] = []
    remote: list[str] = []
    for item in inputs:
        if is_hdfs(item):
            from .hdfs import list_images

            remote += list_images(item, IMAGE_EXTENSIONS)
            continue
        item = os.path.expanduser(item)
        if any(ch in item for ch in "*?[") and not os.path.exists(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputError(item, "the pattern matches no file")
            expanded += matches
        else:
            expanded.append(item)
    return (find_images(expanded) if expanded else []) + remote


def plan_images(paths: list[str]) -> list[dict]:
    """[{"path", "stem", "image_id"}] for the given image paths, in order."""
    return [
        {"path": path, "stem": stem, "image_id": image_id_of(stem)}
        for path, stem in zip(paths, output_stems(paths))
    ]


def batches(image_ids: list[str], size: int) -> list[list[str]]:
    """Images per MapReduce job: consecutive groups of at most ``size``."""
    return [image_ids[i : i + size] for i in range(0, len(image_ids), size)]
