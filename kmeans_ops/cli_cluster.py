"""The CLI's run where the data lives: images in HDFS, ``--out hdfs://...``, ``--engine hadoop``.

No pixel passes through this process. Ingest is one map-only job on the cluster
(kmeans_ops.engines.stages: each task reads its images from HDFS and writes their work files into
the run's HDFS work area), the iterations are the usual jobs, and reconstruction is one more
map-only job writing each output image, label map and JSON into a staging folder beside the
output (``<out>/.kmeans-staging-<run>``). This process then renames each image's files into
``<out>`` (an HDFS rename is atomic; the image first, its JSON last, so a JSON never names a
missing image), and removes the staging folder and the work area. It reads only the jobs' result
lines (a few hundred bytes per image) and the centroids between iterations.

Output names follow the local rules (kmeans_ops.run.output_stems): a name held by anything but
this input's own earlier output moves on to ``-2``, ``-3``, ...; an earlier output of the same
input is replaced.
"""

from __future__ import annotations

import json
import posixpath
import sys
import time
import uuid

from .errors import shown

#: Largest earlier JSON read to see whether a name is this input's own earlier output.
_OWN_JSON_MAX_BYTES = 8 << 20
STAGING_PREFIX = ".kmeans-staging-"


def refusal(args, paths: list[str], params) -> str | None:
    """Why this run cannot go to an ``hdfs://`` --out, or None."""
    from . import palette
    from .paths import is_hdfs

    if args.engine != "hadoop":
        return "--out: an hdfs:// output needs --engine hadoop"
    local = [p for p in paths if not is_hdfs(p)]
    if local:
        return f"--out: an hdfs:// output needs every input in HDFS; {shown(local[0])} is local"
    if palette.mode(params) != "image":
        return "--out: an hdfs:// output works with --palette image only (one palette per image)"
    if params.auto or params.skip_if_larger:
        return (f"--out: an hdfs:// output does not take {'-k auto' if params.auto else '--skip-if-larger'} yet; "
                f"write to a local --out")
    if args.work:
        return "--work: not used with an hdfs:// output (the work area is on HDFS)"
    return None


def _earlier_source(hdfs, json_path: str) -> str | None:
    """The ``source`` of an earlier figures file in the output folder, or None."""
    try:
        status = hdfs.client.status(json_path, strict=False)
        if not status or status["type"] != "FILE" or status["length"] > _OWN_JSON_MAX_BYTES:
            return None
        figures = json.loads(hdfs.read_bytes(json_path))
    except (RuntimeError, ValueError):
        return None
    source = figures.get("source") if isinstance(figures, dict) else None
    return source if isinstance(source, str) else None


def plan_stems(hdfs, paths: list[str], out_path: str, labels: bool) -> list[str]:
    """One output stem per input, none taken in ``out_path`` by something else (see the module)."""
    from .publish import RESERVED_STEMS
    from .run import names_claimed, output_stems

    present = {name.lower(): name for name in (hdfs.list(out_path) if hdfs.exists(out_path) else [])}
    claimed = names_claimed(labels, RESERVED_STEMS)

    def taken(stem: str, path: str) -> bool:
        names = [f"{stem}.png", f"{stem}.json"] + ([f"{stem}-labels.png"] if labels else [])
        if any(n.lower() in present for n in names):
            own = present.get(f"{stem}.json".lower())
            if own is None or _earlier_source(hdfs, posixpath.join(out_path, own)) != path:
                return True
        return claimed(stem, path)

    return output_stems(paths, taken=taken)


def run(args, params, batch_size: int, paths: list[str], engine, say) -> int:
    """The whole run (see the module); the exit status of kmeans_ops.cli.quantize."""
    from .driver import print_progress, run_iterations
    from .engines.stages import hdfs_path
    from .paths import HdfsFS
    from .run import image_id_of

    started = time.perf_counter()
    hdfs = engine.hdfs
    out_uri = HdfsFS().resolve(args.out)
    out_path = hdfs_path(out_uri)
    failures: dict[str, str] = {}

    def failed(source: str, problem: str) -> None:
        failures[source] = problem
        print(f"error: {problem}", file=sys.stderr, flush=True)

    try:
        hdfs.makedirs(out_path)
        stems = plan_stems(hdfs, paths, out_path, params.labels)
    except RuntimeError as err:
        print(f"error: --out: {shown(str(err))}", file=sys.stderr)
        return 2
    key = f"cli-{uuid.uuid4().hex[:12]}"
    area = engine.area_for(key)
    staging = posixpath.join(out_uri, STAGING_PREFIX + key)
    images = [{"path": p, "stem": s, "image_id": image_id_of(s)} for p, s in zip(paths, stems)]
    by_id = {i["image_id"]: i for i in images}
    done = 0
    try:
        try:
            ready = []
            for r in engine.run("ingest", images=images, area=area, params=params.to_json()):
                if not r["ok"]:
                    failed(r["source"], r["error"])
                    continue
                ready.append(r["image_id"])
                say(f"read {shown(r['path'])}: {r['pixels']} pixels, {r['distinct_colours']} distinct colours, k={r['k']}")
                for text in r.get("warnings", []):
                    print(f"warning: {shown(r['path'])}: {shown(text)}", file=sys.stderr, flush=True)
            state = {}
            progress = None if args.quiet else print_progress(params.max_iter)
            for lo in range(0, len(ready), batch_size):
                state.update(run_iterations(area, ready[lo : lo + batch_size], engine, params, progress))
            batch = [{"image_id": i, "stem": by_id[i]["stem"], **state[i]} for i in ready]
            results = engine.run("reconstruct", images=batch, area=area, staging=staging, final=out_uri,
                                 extra={"params": params.to_json(), "engine": engine.name},
                                 options={"labels": params.labels, "dither": params.dither,
                                          "palette_unit": None}) if batch else []
        except RuntimeError as err:  # HDFS or a Hadoop job failed for good: nothing is published
            from .cli import engine_error_lines

            print("\n".join(engine_error_lines(args.engine, err)), file=sys.stderr)
            return 3
        for image_id, r in zip(ready, results):
            source = by_id[image_id]["path"]
            if not r["ok"]:
                failed(source, r["error"])
                continue
            try:
                names = [f"{r['stem']}.png"] + ([f"{r['stem']}-labels.png"] if params.labels else []) + [f"{r['stem']}.json"]
                for name in names:  # the image first, its JSON last: a JSON never names a missing image
                    move_into(hdfs, posixpath.join(hdfs_path(staging), name), posixpath.join(out_path, name))
            except RuntimeError as err:
                failed(source, f"{shown(source)}: {shown(str(err))}")
                continue
            done += 1
            psnr = "inf" if r["psnr"] is None else f"{r['psnr']:.2f}"
            figures = state[image_id]
            say(f"wrote {shown(posixpath.join(out_uri, names[0]))}: k={r['k']}, {figures['iterations']} iterations "
                f"({'converged' if figures['converged'] else 'stopped at max_iter'}), PSNR {psnr} dB")
    finally:
        for folder in (hdfs_path(staging), area.root):
            try:
                if hdfs.exists(folder):
                    hdfs.delete(folder)
            except RuntimeError as err:
                print(f"warning: could not remove {shown(folder)}: {shown(str(err))}", file=sys.stderr)
    print(f"{done} of {len(images)} image(s) done in {time.perf_counter() - started:.1f}s; results in "
          f"{shown(out_uri)}" + (f"; {len(failures)} failed" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


def move_into(hdfs, staged: str, final: str) -> None:
    """Rename a staged file to its final name (WebHDFS renames never overwrite: an earlier output
    of the same input, which plan_stems let this run replace, is removed first)."""
    if hdfs.exists(final):
        hdfs.delete(final)
    hdfs.call("rename", final, hdfs.client.rename, staged, final)
