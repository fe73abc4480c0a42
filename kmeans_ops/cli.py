"""Command line: ``python -m kmeans_ops quantize INPUT... -k K --out DIR``.

Exit status: 0 when every image was done, 1 when some failed (each named on stderr), 2 for a usage
or parameter error, 3 when the engine failed (HDFS or a Hadoop job; nothing is written).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid

from . import params as P

#: Decoded images (and colour tables) up to this many bytes stay in memory between ingest and
#: reconstruction instead of being decoded again.
KEEP_BYTES = 512 << 20
from .errors import InputError

DESCRIPTION = """K-means colour quantisation: redraw each image with its K cluster colours.

For each input image <stem>, writes DIR/<stem>.png (the image in K colours, alpha kept) and
DIR/<stem>.json (k, iterations, converged, centroids_rgb, mse, psnr, history, ...)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kmeans_ops", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="cluster the colours of images", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (JPEG, PNG, BMP, TIFF, WebP) or folders of them (not recursive); "
                        "a seed points.txt (any .txt) gives centroids and figures but no image")
    q.add_argument("-k", type=str, default=None,
                   help=f"number of colours (clusters), an integer >= 1 (default {P.DEFAULT_K}, or the "
                        "number of centroids in the --init file); an image with fewer distinct colours "
                        "keeps all of them")
    q.add_argument("--init", default="kmeans++",
                   help="initial centroids: 'kmeans++' (default, weighted by colour counts), 'random' "
                        "(uniform between the image's smallest and largest value, as the seed did) or "
                        "the path of a clusters file in the seed format ('label B G R' per line)")
    q.add_argument("--seed", default=0, help="seed of every random choice, for reproducible runs (default 0)")
    q.add_argument("--max-iter", default=P.DEFAULT_MAX_ITER,
                   help=f"most iterations (MapReduce jobs) per image (default {P.DEFAULT_MAX_ITER})")
    q.add_argument("--delta", default=P.DEFAULT_DELTA,
                   help=f"converged when no centroid moved more than this, in colour units, 0 to {P.MAX_DELTA:g}; "
                        f"0 runs until no centroid moves (default {P.DEFAULT_DELTA})")
    q.add_argument("--engine", default="local", choices=["local", "hadoop"],
                   help="'local' (default): in-process MapReduce on the local filesystem; "
                        "'hadoop': Hadoop Streaming jobs on YARN with data in HDFS")
    q.add_argument("--batch-size", default=64, help="images per MapReduce job (default 64)")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    q.add_argument("--work", metavar="DIR", default=None,
                   help="keep the work area (points, clusters, per-iteration figures) in DIR "
                        "(default: a temporary folder, removed at the end)")
    q.add_argument("-q", "--quiet", action="store_true", help="print errors and the summary only")
    s = sub.add_parser("samples", help="write sample photos (shipped by scikit-learn and scikit-image) to a folder")
    s.add_argument("folder", help="where to write them (created if missing)")
    return parser


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as err:
        raise InputError(folder, f"cannot write to the output folder ({err.strerror or err})") from None


def quantize(args) -> int:
    from .driver import print_progress, run_iterations
    from .engines import get_engine
    from .ingest import ingest
    from .reconstruct import finish
    from .run import expand_inputs, image_id_of, output_stems
    from .workarea import WorkArea

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    try:
        k = args.k
        if k is None:
            k = P.DEFAULT_K
            if args.init not in P.INIT_METHODS and os.path.isfile(args.init):
                from .formats import read_clusters

                k = len(read_clusters(args.init))
        params = P.validate(k=k, init=args.init, seed=args.seed, max_iter=args.max_iter, delta=args.delta)
        batch_size = P.integer("batch_size", args.batch_size, 1)
        _check_writable(args.out)
        paths = expand_inputs(args.inputs)
    except (P.ParamError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: no images found in {', '.join(args.inputs)}", file=sys.stderr)
        return 2

    try:
        engine = get_engine(args.engine)
    except Exception as err:  # noqa: BLE001 - a missing Hadoop client or connection: say what
        print(f"error: engine {args.engine}: {err}", file=sys.stderr)
        return 2
    work = args.work or tempfile.mkdtemp(prefix="kmeans-work-")
    local = WorkArea(os.path.abspath(work))
    area = local
    failures: dict[str, str] = {}
    started = time.perf_counter()
    held = 0  # bytes of decoded images kept in memory for reconstruction (up to KEEP_BYTES)
    kept = {}
    try:
        ready = []  # (path, stem, image id)
        for path, stem in zip(paths, output_stems(paths)):
            image_id = image_id_of(stem)
            try:
                meta, image, table = ingest(path, image_id, local, params, keep=True)
                if hasattr(engine, "remember"):
                    engine.remember(local, image_id, table)
                size = (image.bgr.nbytes if image is not None else 0) + table.codes.nbytes * 3
                if held + size <= KEEP_BYTES:
                    kept[image_id] = (image, table)
                    held += size
                del image, table
                ready.append((path, stem, image_id))
                say(f"read {path}: {meta['pixels']} pixels, {meta['distinct_colours']} distinct colours, k={meta['k']}")
            except (InputError, MemoryError) as err:
                failures[path] = str(err) if isinstance(err, InputError) else f"{path}: out of memory"
                print(f"error: {failures[path]}", file=sys.stderr, flush=True)
        runs = {}
        try:
            if ready:
                area = engine.stage(local, f"cli-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            progress = None if args.quiet else print_progress(params.max_iter)
            for lo in range(0, len(ready), batch_size):
                batch = [image_id for _, _, image_id in ready[lo : lo + batch_size]]
                runs.update(run_iterations(area, batch, engine, params, progress))
        except RuntimeError as err:  # HDFS or the Hadoop job failed for good: nothing is written
            print(f"error: {args.engine} engine: {err}", file=sys.stderr)
            return 3
        extra = {"params": params.to_json(), "engine": engine.name}
        for path, stem, image_id in ready:
            try:
                out_image = os.path.join(args.out, f"{stem}.png")
                image, table = kept.pop(image_id, (None, None))
                result = finish(engine.fetch(area, image_id, local.root), image_id, runs[image_id], out_image,
                                os.path.join(args.out, f"{stem}.json"), extra, image=image, table=table)
                del image, table
                psnr = "inf" if result["psnr"] is None else f"{result['psnr']:.2f}"
                state = "converged" if result["converged"] else "stopped at max_iter"
                say(f"wrote {result['output'] or os.path.join(args.out, stem + '.json')}: k={result['k']}, "
                    f"{result['iterations']} iterations ({state}), PSNR {psnr} dB")
            except (InputError, OSError, RuntimeError) as err:  # RuntimeError: HDFS, fetching its results
                failures[path] = str(err) if isinstance(err, InputError) else f"{path}: {err}"
                print(f"error: {failures[path]}", file=sys.stderr, flush=True)
    finally:
        if area is not local:
            try:
                engine.discard(area)
            except RuntimeError as err:
                print(f"warning: could not remove the work area {area.root}: {err}", file=sys.stderr)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    done = len(paths) - len(failures)
    print(f"{done} of {len(paths)} image(s) done in {time.perf_counter() - started:.1f}s; results in "
          f"{os.path.abspath(args.out)}" + (f"; {len(failures)} failed" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "quantize":
        return quantize(args)
    if args.command == "samples":
        from .samples import write_samples

        for path in write_samples(args.folder):
            print(path)
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
