"""A pipeline run: its inputs, ids, work area and output folders, and the batches of each job.

Everything here is small and JSON-friendly: the DAG passes these values between tasks by XCom
(paths and ids, never pixels).
"""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import quote

from .errors import InputError, shown



def run_key(run_id: str) -> str:
    """A folder-safe name for a run id (Airflow run ids hold ':', '+' and '~'), unique per run id.

    The readable part (the run id with every other character made '_', shortened) is followed by
    128 bits of the run id's SHA-256: two run ids that read alike still get different folders, and
    a run id chosen to land on another run's folder would take about 2^64 tries, not 2^12."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"{safe[:64]}-{digest}"


def output_stems(paths: list[str], taken=None) -> list[str]:
    """One output stem per input: the file name without extension, made unique with -2, -3, ...

    A stem is unique among the inputs (case-insensitively), and with ``taken`` also free in the
    output folder: ``taken(stem, path)`` says whether the outputs named ``stem`` already belong to
    something else than ``path`` (the CLI: a file that is not this input's own earlier output), and
    then the next name is tried.
    """
    used: set[str] = set()
    stems = []
    for path in paths:
        base = os.path.splitext(os.path.basename(path))[0] or "image"
        stem, n = base, 1
        while stem.lower() in used or (taken is not None and taken(stem, path)):
            n += 1
            stem = f"{base}-{n}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def image_id_of(stem: str) -> str:
    """A whitespace-free, ASCII id for the files of the work area and the MapReduce records."""
    return quote(stem.encode("utf-8", "surrogateescape"), safe="")


def expand_inputs(inputs: list[str], allowed=None) -> list[str]:
    """Files, folders and glob patterns (local or ``hdfs://``) -> the image paths they name
    (kmeans_ops.paths.expand; ``allowed``: the AllowedRoots every path must lie under). A pattern
    that matches nothing, or a path that does not exist, raises InputError."""
    from .paths import expand

    return expand(inputs, allowed=allowed)


def names_claimed(labels: bool, reserved: tuple[str, ...] = ()):
    """``taken(stem, path)`` for :func:`output_stems`: whether a name of ``stem``'s outputs is one
    another stem of the same run already uses, or one of ``reserved`` (the run folder's own files:
    input ``summary.png`` would write ``summary.json`` over the run's summary). With ``labels``
    every stem also writes ``<stem>-labels.png``, so input ``a-labels.png``'s image and input
    ``a.png``'s label map would be the same file: the later one moves on to the next name."""
    claimed: set[str] = {name.lower() for name in reserved}

    def taken(stem: str, path: str) -> bool:
        names = {stem.lower(), f"{stem}-labels".lower()} if labels else {stem.lower()}
        if names & claimed:
            return True
        claimed.update(names)
        return False

    return taken


def plan_images(paths: list[str], labels: bool = False) -> list[dict]:
    """[{"path", "stem", "image_id"}] for the given image paths, in order; no two images' outputs
    share a name (``labels``: label maps count, see names_claimed)."""
    from .publish import RESERVED_STEMS

    return [
        {"path": path, "stem": stem, "image_id": image_id_of(stem)}
        for path, stem in zip(paths, output_stems(paths, taken=names_claimed(labels, RESERVED_STEMS)))
    ]


def batches(image_ids: list[str], size: int) -> list[list[str]]:
    """Images per MapReduce job: consecutive groups of at most ``size``."""
    return [image_ids[i : i + size] for i in range(0, len(image_ids), size)]


def job_batches(image_ids: list[str], size: int) -> list[list[str]]:
    """The DAG's jobs of one iteration: :func:`batches` of ``size`` (the ``batch_size`` param), with
    bigger batches when needed so that an iteration never maps more than
    settings.MAX_JOBS_PER_ITERATION jobs (Airflow's stock ``max_map_length`` is 1024)."""
    from .settings import MAX_JOBS_PER_ITERATION

    return batches(image_ids, max(size, -(-len(image_ids) // MAX_JOBS_PER_ITERATION)))


def check_output_scheme(output: str, engine: str) -> None:
    """ParamError naming ``output`` unless the run can publish there: a local folder, or with
    engine ``hadoop`` an ``hdfs://`` one (the embedded engine's runs publish local folders only)."""
    from .params import ParamError
    from .paths import check_scheme, is_hdfs

    try:
        check_scheme("output", output, supported=(None, "hdfs") if engine == "hadoop" else (None,))
    except ParamError as err:
        if is_hdfs(output):
            raise ParamError(f"{err} (an hdfs:// output needs engine hadoop)") from None
        raise


def plan(conf: dict, run_id: str, dag_id: str) -> dict:
    """Check a DAG run's params once and plan the run: its images, work area and output folder.

    Every path param (``input`` items, ``init``, ``palette`` and ``keep`` when they are files, ``output``: local, or
    ``hdfs://`` with engine hadoop) is checked against
    the allowed roots (kmeans_ops.paths) before anything is read, then every image the inputs name
    (a folder's files, a pattern's matches) is checked again once resolved, so a symlink pointing
    outside is refused. Raises ParamError (PathNotAllowed for a path outside), InputError for an
    input that does not exist, SettingError for an unusable Variable; nothing is read or written
    outside the roots and nothing is written at all.
    """
    from . import params as P
    from . import settings
    from .paths import AllowedRoots, check_scheme, within
    from .publish import PublishError, check_publishable, final_dir, staging_dir

    roots = AllowedRoots.from_settings()
    inputs = list(conf["input"])
    # Every path param is resolved and checked before anything is read: the files first (output,
    # init, palette), then the inputs, whose folders and pattern matches are checked one by one.
    check_output_scheme(conf["output"], conf["engine"])
    output = roots.check("output", conf["output"])
    init, palette = conf["init"], conf.get("palette", "image")
    given = {}  # resolved path -> as the user gave it, for messages (never the resolved target)
    if init not in P.INIT_METHODS:
        check_scheme("init", init, supported=(None,))
        init = roots.check("init", init)
        given[init] = conf["init"]
    if palette not in P.PALETTE_MODES:
        check_scheme("palette", palette, supported=(None,))
        palette = roots.check("palette", palette)
        given[palette] = conf["palette"]
    keep = conf.get("keep")
    if isinstance(keep, str) and keep.strip() and not keep.lstrip().startswith("#"):  # a clusters file
        check_scheme("keep", keep, supported=(None,))
        keep = roots.check("keep", keep)
        given[keep] = conf["keep"]
    validated = P.validate(k=conf["k"], init=init, seed=conf["seed"], max_iter=conf["max_iterations"],
                           delta=conf["delta"], palette=palette, labels=conf.get("labels", False),
                           dither=conf.get("dither", "none"), given=given, keep=keep,
                           skip_if_larger=conf.get("skip_if_larger", False), quality=conf.get("quality"),
                           max_k=conf.get("max_k", P.DEFAULT_MAX_K_AUTO))
    per_task = P.iterations_per_task(conf.get("iterations_per_task", settings.iterations_per_task()))
    paths = expand_inputs(inputs, allowed=roots)
    if not paths:
        raise InputError(", ".join(inputs), "no images found")
    images = plan_images(paths, labels=validated.labels)
    key = run_key(run_id)
    ours = [final_dir(output, key), staging_dir(output, key)]
    for image in images:
        image["path"] = roots.check("input", image["path"])  # read from here on: the checked real path
        if within(image["path"], ours):
            raise P.ParamError(f"output: {shown(conf['output'])} would replace the input {shown(image['path'])}; "
                               f"choose another output folder")
    try:
        check_publishable(output, key, run_id, dag_id, replace=bool(conf.get("replace_published", False)))
    except PublishError as err:  # an HDFS error (HdfsError) is raised as it is: the task is retried
        raise P.ParamError(f"output: {err}") from None
    return {
        "run_id": run_id,
        "dag_id": dag_id,
        "key": key,
        "engine": conf["engine"],
        "work": os.path.join(settings.work_root(), key),
        "output": output,
        "batch_size": conf["batch_size"],
        "iterations_per_task": per_task,
        "replace_published": bool(conf.get("replace_published", False)),
        "params": validated.to_json(),
        "images": images,
    }


def group_iterations(group: int, per_task: int, max_iter: int) -> range:
    """The K-means iterations the DAG's group ``iteration_NN`` (``group`` NN, from 1) runs with
    ``per_task`` iterations per task: (NN-1)*per_task+1 to NN*per_task, none beyond ``max_iter``
    (an empty range for a group past it)."""
    return range((group - 1) * per_task + 1, min(group * per_task, max_iter) + 1)


def task_batches(items: list, max_tasks: int | None = None, min_size: int | None = None) -> list[list]:
    """Items split into consecutive, nearly equal groups, one per mapped task: at most ``max_tasks``
    groups and at least ``min_size`` items per group (but one group when there are fewer), so a
    folder of any size maps to a handful of tasks (settings.MAX_STAGE_TASKS)."""
    from . import settings

    max_tasks = max_tasks or settings.MAX_STAGE_TASKS
    min_size = min_size or settings.MIN_IMAGES_PER_TASK
    if not items:
        return []
    count = max(1, min(max_tasks, len(items) // min_size))
    size, extra = divmod(len(items), count)
    groups, lo = [], 0
    for i in range(count):
        hi = lo + size + (1 if i < extra else 0)
        groups.append(items[lo:hi])
        lo = hi
    return groups


def batch_label(names: list[str], width: int = 60) -> str:
    """A mapped task's label: its images' names, shortened to about ``width`` characters."""
    from .errors import shown

    names = [shown(n) for n in names]
    label = ", ".join(names)
    if len(label) <= width:
        return label
    kept = []
    for name in names:
        if len(", ".join(kept + [name])) > width - 12:
            break
        kept.append(name)
    kept = kept or [names[0][: width - 12]]
    return f"{', '.join(kept)} (+{len(names) - len(kept)} more)"
