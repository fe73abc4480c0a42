"""Where a DAG run's ingest and reconstruction run: in the Airflow task, or on the cluster.

With the Hadoop engine, an image in HDFS is ingested by a map-only job on the cluster (stage
"ingest" of kmeans_ops.engines.stages), straight into the run's work area in HDFS: its pixels
never pass through the Airflow worker. With an ``hdfs://`` output too, such an image is also
reconstructed on the cluster (stage "reconstruct"), its outputs written into the run's staging
folder in HDFS. Everything else runs in the task as before: images on the local filesystem are
ingested into the local work area, which ``upload`` then stages, and reconstructed in the task.

Shared palettes (``palette`` "run" or a file) keep the in-task path: the union of the run's
colour tables is built from the local work area, and the stages' jobs reconstruct an image from
its own files only. So does ``k`` "auto": the quality search (kmeans_ops.search) writes its
candidates beside the images in the local work area and stages each round by itself.
"""

from __future__ import annotations

from .workarea import WorkArea


def cluster_stages(engine, params: dict) -> bool:
    """Whether this run's images in HDFS are ingested and reconstructed by jobs on the cluster: an
    engine that runs those stages there (``Engine.remote_stages``: the Hadoop engine's) and one
    palette per image, of a K given (not "auto")."""
    from .palette import mode
    from .params import Params

    chosen = Params.from_json(params)
    return "ingest" in engine.remote_stages and mode(chosen) == "image" and not chosen.auto


def ingested_on_cluster(engine, params: dict, image: dict) -> bool:
    """Whether ``image`` (``{"path", ...}``: a planned image or its ingest record) is ingested by a
    job on the cluster."""
    from .paths import is_hdfs

    return cluster_stages(engine, params) and is_hdfs(image["path"])


def stage(engine, local: WorkArea, key: str, params: dict, ingested: list[dict], unit: str | None = None):
    """Put a run's work area where the engine reads it, after ingest (``ingested``: the records of
    the images ingested without error); returns (that area, the ids of the images the cluster
    ingested).

    The engine stages what the task ingested into the local area (``engine.stage``: the Hadoop
    engine uploads each image's folder on its own, beside those the cluster ingested into the run's
    HDFS work area, which stay); with a shared palette, the palette unit alone (the images' own
    files stay local, where reconstruction reads them). With ``k`` "auto", nothing: the search
    stages each of its rounds (kmeans_ops.search), and the local area is returned.
    """
    from .palette import unit_area
    from .params import Params

    if Params.from_json(params).auto:
        return local, []

    on_cluster = [r["image_id"] for r in ingested if ingested_on_cluster(engine, params, r)]
    return engine.stage(unit_area(local, unit) if unit else local, key), on_cluster


def reconstructed_on_cluster(engine, plan: dict) -> set[str]:
    """The images of the run reconstructed by a job on the cluster: those it ingested there, when
    the output is in HDFS (the job writes into its staging folder there)."""
    from .paths import is_hdfs

    if not (cluster_stages(engine, plan["params"]) and is_hdfs(plan["output"])):
        return set()
    return set(plan.get("on_cluster") or ())


def interleave(batch: list[dict], remote: set[str], remote_results: list[dict], local_results: list[dict]) -> list[dict]:
    """The results of a batch in its order: an image whose id is in ``remote`` takes the next
    record of ``remote_results``, any other the next of ``local_results`` (each in batch order)."""
    remote_results, local_results = iter(remote_results), iter(local_results)
    return [next(remote_results) if image["image_id"] in remote else next(local_results) for image in batch]
