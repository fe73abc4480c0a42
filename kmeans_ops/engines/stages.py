"""Ingest and reconstruction as map-only Hadoop Streaming jobs, where the images are (HDFS).

With the Hadoop engine and images in HDFS, the submitter (the CLI or an Airflow task) sends no
pixel through itself: it writes a manifest (one JSON line per image) beside the work area and
submits one map-only job whose map tasks each take a few lines (``NLineInputFormat``,
settings.hadoop_images_per_map) and run, on the node, the same functions as the embedded path:

- ``ingest``: kmeans_ops.ingest.ingest_batch for one image into a local temporary work area (the
  image is read from HDFS there, its byte and pixel budgets checked before decoding), then the
  image's work files (points, initial clusters, image.json) uploaded into the run's work area;
- ``reconstruct``: the image's work files and source brought to the node,
  kmeans_ops.reconstruct.reconstruct_batch into a local folder, then the output image, label map
  and JSON figures uploaded into the run's staging folder, and the report's before/after
  thumbnails into the work area.

Each task writes one result line per image (``<image id>\\t<JSON>``, the same records ingest_batch
and reconstruct_batch return) to the job's output folder; :func:`collect` reads them back. A bad
image gives its failure record, as in process; the rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import sys
import tempfile

from .. import settings
from ..errors import shown
from ..workarea import WorkArea

log = logging.getLogger(__name__)

#: The work-area file of an image holding its report thumbnails (``{"before", "after"}`` data URIs).
THUMBNAILS = "thumbnails.json"


def job_spec(engine, stage: str, images: list[dict], area: WorkArea, **conf) -> dict:
    """The streaming job of ``stage`` for ``images`` (what _launch submits); writes its manifest.

    ``conf``: for "ingest" ``params`` (Params.to_json()); for "reconstruct" ``staging`` and
    ``final`` (the run's output folders on HDFS), ``extra`` and ``options`` (of reconstruct_batch).
    """
    if stage not in ("ingest", "reconstruct"):
        raise ValueError(f"stage must be 'ingest' or 'reconstruct', got {stage!r}")
    tag = hashlib.sha1("\n".join(i["image_id"] for i in images).encode()).hexdigest()[:10]
    jobs = posixpath.join(area.root, "jobs")
    manifest, output = posixpath.join(jobs, f"{stage}-{tag}.manifest"), posixpath.join(jobs, f"{stage}-{tag}")
    engine.hdfs.write_bytes(manifest, "".join(json.dumps(i, sort_keys=True) + "\n" for i in images).encode())
    task = {"stage": stage, "area": area.root, "output": output, **conf}
    return {
        "what": f"{stage} of {len(images)} image(s)",
        "name": f"kmeans {stage} ({len(images)} images)",
        "inputs": [manifest],
        "output": output,
        "files": {"job.json": json.dumps(task).encode()},
        "mapper": f"{stage} job.json",
        "options": ["-D", "mapreduce.job.reduces=0",
                    "-D", f"mapreduce.input.lineinputformat.linespermap={settings.hadoop_images_per_map()}",
                    # a decode or a redraw may take minutes with no record written: tasks report status
                    "-D", "mapreduce.task.timeout=1800000"],
        "streaming": ["-inputformat", "org.apache.hadoop.mapred.lib.NLineInputFormat",
                      "-outputformat", "org.apache.hadoop.mapred.lib.NullOutputFormat"],
        "env": engine.node_env(),
    }


def collect(engine, job: dict) -> list[dict]:
    """The job's result records, in the manifest's order; an image with no record (its task
    wrote none) gets a failure record naming the job."""
    args = job["args"]
    found = {}
    for part, lines in engine.output_parts(job):
        for number, line in enumerate(lines, start=1):
            image_id, _, value = line.partition("\t")
            try:
                found[image_id] = json.loads(value)
            except ValueError:
                raise RuntimeError(f"{job['what']}: {shown(part)}: line {number}: expected "
                                   "'<image id>\\t<result as JSON>'") from None
    results = []
    for image in args["images"]:
        if image["image_id"] in found:
            results.append(found[image["image_id"]])
        else:
            source = image.get("path") or image["stem"]
            results.append({**image, "ok": False, "stage": job["stage"], "source": source,
                            "error": f"{shown(source)}: job {job.get('application_id')} gave no result for it"})
    return results


# ------------------------------------------------------------------ on the node
def _records(stdin):
    """The manifest lines given to this map task (a key before a tab is dropped: streaming passes
    NLineInputFormat's byte offsets)."""
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        key, tab, rest = line.partition("\t")
        yield json.loads(rest if tab and key.isdigit() else line)


def run_task(stage: str, job_path: str, stdin) -> tuple[str, str]:
    """Run ``stage`` for each manifest line of ``stdin``; returns (output folder, result lines)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with open(job_path, encoding="utf-8") as handle:
        conf = json.load(handle)
    one = _ingest_one if stage == "ingest" else _reconstruct_one
    lines = []
    for record in _records(stdin):
        print(f"reporter:status:{stage} {record['image_id']}", file=sys.stderr, flush=True)
        lines.append(f"{record['image_id']}\t{json.dumps(one(record, conf))}\n")
    return conf["output"], "".join(lines)


def _ingest_one(image: dict, conf: dict) -> dict:
    from ..hdfs import Hdfs
    from ..ingest import ingest_batch
    from ..params import Params

    with tempfile.TemporaryDirectory(prefix="kmeans-ingest-") as tmp:
        local = WorkArea(tmp)
        [result] = ingest_batch([image], local, Params.from_json(conf["params"]), log)
        if result["ok"]:
            try:
                Hdfs().upload_dir(local.image_dir(image["image_id"]), WorkArea(conf["area"]).image_dir(image["image_id"]))
            except RuntimeError as err:  # HdfsError: names the path and the NameNode
                return {**image, "ok": False, "stage": "ingest", "source": image["path"],
                        "error": f"{shown(image['path'])}: {shown(str(err))}"}
        return result


def _reconstruct_one(image: dict, conf: dict) -> dict:
    from ..hdfs import Hdfs
    from ..paths import HdfsFS
    from ..reconstruct import reconstruct_batch
    from ..report import THUMB_SIDE, thumbnail_data_uri

    hdfs, remote = Hdfs(), WorkArea(conf["area"])
    with tempfile.TemporaryDirectory(prefix="kmeans-reconstruct-") as tmp:
        local, out = WorkArea(os.path.join(tmp, "work")), os.path.join(tmp, "out")
        os.makedirs(out)

        def area_of(image_id: str) -> WorkArea:
            os.makedirs(os.path.dirname(local.image_dir(image_id)), exist_ok=True)
            hdfs.download(remote.image_dir(image_id), local.image_dir(image_id))
            return local

        [result] = reconstruct_batch([image], area_of, out, conf["final"], conf["extra"], log, conf["options"])
        if not result["ok"]:
            return result
        try:
            for name in sorted(os.listdir(out)):
                with open(os.path.join(out, name), "rb") as handle:
                    hdfs.write_bytes(posixpath.join(hdfs_path(conf["staging"]), name), handle.read())
            with open(result["json"], encoding="utf-8") as handle:
                output = json.load(handle).get("output")
            source = os.path.join(tmp, "source")
            hdfs.download(hdfs_path(image_source(local, image["image_id"])), source)
            thumbnails = {"before": thumbnail_data_uri(source, THUMB_SIDE),
                          "after": thumbnail_data_uri(os.path.join(out, posixpath.basename(output)), THUMB_SIDE)
                          if output else None}
            hdfs.write_bytes(posixpath.join(remote.image_dir(image["image_id"]), THUMBNAILS),
                             json.dumps(thumbnails).encode())
        except (OSError, RuntimeError, ValueError) as err:
            return {"ok": False, "stage": "reconstruct", "source": image["stem"],
                    "error": f"{shown(image['stem'])}: {shown(str(err))}"}
        prefix = HdfsFS.split(conf["staging"])[0]  # hdfs://host:port of the output
        return {**result, "json": posixpath.join(conf["staging"], image["stem"] + ".json"),
                "thumbnails": prefix + posixpath.join(remote.image_dir(image["image_id"]), THUMBNAILS)}


def image_source(area: WorkArea, image_id: str) -> str:
    with open(area.meta(image_id), encoding="utf-8") as handle:
        return json.load(handle)["source"]


def hdfs_path(uri: str) -> str:
    """The path part of an ``hdfs://`` URI (a path is returned as it is)."""
    from ..paths import HdfsFS, is_hdfs

    return HdfsFS().path(uri) if is_hdfs(uri) else uri
