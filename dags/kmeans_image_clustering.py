"""K-means colour quantisation of images, as MapReduce iterations driven by Airflow."""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Asset, Param, TaskGroup, dag, task
from kmeans_ops import settings
from kmeans_plugin.operators import ConvergenceOperator, KMeansIterationOperator

#: Parse-time number of iteration steps. The `max_iterations` param stops earlier, never later.
ITERATION_BOUND = settings.iteration_bound()
DEFAULT_OUTPUT = settings.output_root()
STEPS = ("batches", "mapreduce", "converge", "exit")  # the tasks of one iteration group
RESULTS = Asset(name="kmeans_results", uri=f"file://{os.path.abspath(DEFAULT_OUTPUT)}")

DOC = f"""
### K-means colour quantisation

Redraws each image with its K cluster colours. Give one or more **input** folders, files or glob
patterns; each image's output PNG, its figures (JSON) and an HTML **report** are published together
in `<output>/<run key>/` (and `<output>/latest`).

Pipeline: `prepare` (check params, find images) -> `ingest` (one task per image: colour table,
points and initial clusters files) -> `upload` (to the run's work area) -> `iteration_NN`: one
MapReduce job per batch of images still moving, then `converge` goes on to the next iteration or
exits -> `reconstruct` (one task per image) -> `publish` -> `cleanup`.

Up to {ITERATION_BOUND} iterations (parse-time bound); `max_iterations` stops earlier. A bad image
is reported and the others go on; a run where every image fails is marked failed.
"""


@dag(
    dag_id="kmeans_image_clustering",
    schedule=None,
    catchup=False,
    max_active_runs=4,
    tags=["kmeans", "images", "mapreduce"],
    doc_md=DOC,
    params={
        "input": Param(
            [],
            type="array",
            items={"type": "string", "minLength": 1},
            minItems=1,
            title="Input images",
            description_md="Local folders, image files or glob patterns, one per line "
            "(JPEG, PNG, BMP, TIFF, WebP). `hdfs://` paths with the Hadoop engine. Every path must lie "
            "under the allowed roots (Airflow Variable `kmeans_allowed_roots`).",
        ),
        "k": Param(settings.DEFAULT_K, type="integer", minimum=1, maximum=settings.MAX_K, title="K (colours)",
                   description=f"Number of clusters, i.e. colours in each output image: 1 to {settings.MAX_K}."),
        "max_iterations": Param(ITERATION_BOUND, type="integer", minimum=1, maximum=ITERATION_BOUND,
                                title="Max iterations",
                                description=f"Most MapReduce iterations per image (at most {ITERATION_BOUND})."),
        "delta": Param(settings.DEFAULT_DELTA, type="number", minimum=0, maximum=settings.MAX_DELTA,
                       title="Delta (convergence)",
                       description=f"Converged when no centroid moved more than this many colour units, 0 to "
                                   f"{settings.MAX_DELTA:g}; 0 means until no centroid moves."),
        "init": Param("kmeans++", type="string", minLength=1, title="Initial centroids",
                      examples=["kmeans++", "random"],
                      description="'kmeans++', 'random' (the seed's rule) or the path of a clusters file "
                                  "('label B G R' per line) under the allowed roots; its K must equal k."),
        "seed": Param(settings.DEFAULT_SEED, type="integer", minimum=0, maximum=settings.MAX_SEED, title="Random seed",
                      description=f"Seed of every random choice, 0 to {settings.MAX_SEED}: same seed, same result."),
        "engine": Param("local", type="string", enum=["local", "hadoop"], title="Engine",
                        values_display={"local": "Embedded (in-process MapReduce)",
                                        "hadoop": "Hadoop Streaming on YARN, data in HDFS"}),
        "output": Param(DEFAULT_OUTPUT, type="string", minLength=1, title="Output folder",
                        description="Each run publishes into <output>/<run key>/; must lie under the "
                                    "allowed roots (Airflow Variable kmeans_allowed_roots)."),
        "batch_size": Param(settings.DEFAULT_BATCH_SIZE, type="integer", minimum=1, maximum=settings.MAX_BATCH_SIZE,
                            title="Images per job",
                            description=f"Images carried by one MapReduce job: 1 to {settings.MAX_BATCH_SIZE}."),
    },
)
def kmeans_image_clustering():
    @task
    def prepare(**context) -> dict:
        """Validate the parameters once and list the images: the run's plan."""
        from airflow.sdk.exceptions import AirflowFailException

        from kmeans_ops.errors import InputError
        from kmeans_ops.params import ParamError
        from kmeans_ops.run import plan
        from kmeans_ops.settings import SettingError

        try:
            return plan(dict(context["params"]), context["run_id"], context["dag"].dag_id)
        except (ParamError, InputError, SettingError) as err:
            raise AirflowFailException(str(err)) from None

    @task
    def images_of(run: dict) -> list[dict]:
        return run["images"]

    @task(map_index_template="{{ image_name }}")
    def ingest(image: dict, run: dict) -> dict:
        """Colour table, points file and initial clusters of one image (a bad image is reported)."""
        from airflow.sdk import get_current_context

        from kmeans_ops import ingest as stage
        from kmeans_ops.errors import InputError
        from kmeans_ops.params import Params
        from kmeans_ops.workarea import WorkArea

        get_current_context()["image_name"] = image["stem"]
        try:
            meta = stage.ingest(image["path"], image["image_id"], WorkArea(run["work"]), Params(**run["params"]))
        except (InputError, MemoryError) as err:
            message = str(err) if isinstance(err, InputError) else f"{image['path']}: out of memory"
            import logging

            logging.getLogger(__name__).error("skipping image: %s", message)
            return {**image, "ok": False, "stage": "ingest", "source": image["path"], "error": message}
        return {**image, "ok": True, "k": meta["k"], "pixels": meta["pixels"], "distinct_colours": meta["distinct_colours"]}

    @task
    def upload(run: dict, ingested: list[dict]) -> dict:
        """Put the run's work area where the engine reads it; fail the run if no image is usable."""
        from airflow.sdk.exceptions import AirflowFailException

        ingested = list(ingested)
        good = [r for r in ingested if r["ok"]]
        failures = [{k: r[k] for k in ("source", "error", "stage")} for r in ingested if not r["ok"]]
        if not good:
            reasons = "; ".join(f["error"] for f in failures)
            raise AirflowFailException(f"all {len(ingested)} image(s) failed: {reasons}")
        from kmeans_ops.engines import get_engine
        from kmeans_ops.workarea import WorkArea

        area = get_engine(run["engine"]).stage(WorkArea(run["work"]), run["key"])
        return {**run, "work": area.root, "local_work": run["work"],
                "images": {r["image_id"]: r["stem"] for r in good}, "failures": failures}

    @task
    def first_batches(run: dict) -> list[list[str]]:
        from kmeans_ops.run import batches

        return batches(list(run["images"]), run["batch_size"])

    @task
    def next_batches(run: dict, figures: list[dict]) -> list[list[str]]:
        """The images of the previous iteration that have not converged, in batches."""
        from kmeans_ops.run import batches

        moving = [image_id for job in figures for image_id, f in job.items() if not f["converged"]]
        return batches(moving, run["batch_size"])

    run = prepare()
    ingested = ingest.partial(run=run).expand(image=images_of(run))
    uploaded = upload(run, ingested)

    exits = []
    previous = None
    for i in range(1, ITERATION_BOUND + 1):
        with TaskGroup(group_id=f"iteration_{i:02d}"):
            if previous is None:
                jobs = first_batches.override(task_id="batches")(uploaded)
            else:
                previous_converge, previous_figures = previous
                jobs = next_batches.override(task_id="batches")(uploaded, previous_figures)
                previous_converge >> jobs
            mapreduce = KMeansIterationOperator.partial(
                task_id="mapreduce", plan=uploaded, iteration=i, retries=2, retry_delay=timedelta(seconds=10)).expand(batch=jobs)
            figures = mapreduce.output
            later = [f"iteration_{j:02d}.{name}" for j in range(i + 1, ITERATION_BOUND + 1) for name in STEPS]
            decision = ConvergenceOperator(
                task_id="converge", plan=uploaded, figures=figures, iteration=i, bound=ITERATION_BOUND,
                skip_on_continue=[f"iteration_{i:02d}.exit"], skip_on_exit=later,
            )
            mapreduce >> decision
            exit_ = EmptyOperator(task_id="exit")
            decision >> exit_
            exits.append(exit_)
            previous = (decision, figures)

    # Joins whichever iteration exited; the others are skipped, which must not skip what follows.
    converged = EmptyOperator(task_id="converged", trigger_rule="none_failed_min_one_success")
    exits >> converged

    @task
    def finals(run: dict, **context) -> list[dict]:
        """Each image's last iteration and whether it converged (from the iterations' results)."""
        ti = context["ti"]
        state: dict[str, dict] = {}
        for i in range(1, ITERATION_BOUND + 1):
            pulled = ti.xcom_pull(task_ids=f"iteration_{i:02d}.mapreduce")  # every map index
            if pulled is None:
                continue
            jobs = pulled if isinstance(pulled, list) else [pulled]
            for job in jobs:
                for image_id, f in (job or {}).items():
                    state[image_id] = {"iterations": f["iteration"], "converged": f["converged"]}
        return [{"image_id": image_id, "stem": stem, **state[image_id]} for image_id, stem in run["images"].items()]

    @task(map_index_template="{{ image_name }}")
    def reconstruct(image: dict, run: dict) -> dict:
        """The image in its K colours and its figures, into the run's staging folder."""
        import time

        from airflow.sdk import get_current_context

        from kmeans_ops.engines import get_engine
        from kmeans_ops.errors import InputError
        from kmeans_ops.publish import staging_dir
        from kmeans_ops.reconstruct import finish
        from kmeans_ops.workarea import WorkArea

        get_current_context()["image_name"] = image["stem"]
        started = time.perf_counter()
        staging = staging_dir(run["output"], run["key"])
        try:
            area = get_engine(run["engine"]).fetch(WorkArea(run["work"]), image["image_id"], run["local_work"])
            result = finish(area, image["image_id"], image,
                            os.path.join(staging, image["stem"] + ".png"), os.path.join(staging, image["stem"] + ".json"),
                            extra={"params": run["params"], "engine": run["engine"], "run_id": run["run_id"]})
        except (InputError, OSError) as err:
            import logging

            logging.getLogger(__name__).error("reconstruction failed: %s", err)
            return {"ok": False, "stage": "reconstruct", "source": image["stem"], "error": str(err)}
        return {"ok": True, "stem": image["stem"], "json": os.path.join(staging, image["stem"] + ".json"),
                "seconds": time.perf_counter() - started, "psnr": result["psnr"], "k": result["k"]}

    @task(outlets=[RESULTS])
    def publish(run: dict, reconstructed: list[dict], **context) -> str:
        """Report, summary and images published together into <output>/<run key>/."""
        import json

        from airflow.sdk.exceptions import AirflowFailException

        from kmeans_ops.publish import PublishError, final_dir, publish as publish_run, staging_dir
        from kmeans_plugin.links import OUTPUTS_KEY

        reconstructed = list(reconstructed)
        failures = list(run["failures"]) + [r for r in reconstructed if not r["ok"]]
        final = final_dir(run["output"], run["key"])
        if not os.path.isdir(staging_dir(run["output"], run["key"])) and os.path.isdir(final):
            print(f"already published: {final}")  # a cleared and re-run publish
        else:
            results = []
            for r in reconstructed:
                if r["ok"]:
                    result = json.load(open(r["json"], encoding="utf-8"))
                    result["seconds"] = r["seconds"]
                    results.append(result)
            info = {k: run[k] for k in ("run_id", "dag_id", "engine", "params", "output")}
            try:
                publish_run(run["output"], run["key"], results, failures, info)
            except PublishError as err:
                raise AirflowFailException(str(err)) from None
        context["ti"].xcom_push(key=OUTPUTS_KEY, value=f"file://{final}/report.html")
        context["outlet_events"][RESULTS].extra = {"folder": final, "run_id": run["run_id"]}
        for f in failures:
            print(f"failed: {f['error']}")
        if not any(r["ok"] for r in reconstructed):
            raise AirflowFailException("no image could be reconstructed: " + "; ".join(f["error"] for f in failures))
        print(f"published {final}")
        return final

    @task
    def cleanup(run: dict) -> None:
        """Remove the run's work area once its results are published (the seed never cleaned up)."""
        import shutil

        from kmeans_ops.engines import get_engine
        from kmeans_ops.workarea import WorkArea

        get_engine(run["engine"]).discard(WorkArea(run["work"]))
        shutil.rmtree(run["local_work"], ignore_errors=True)

    last = finals(uploaded)
    converged >> last
    published = publish(uploaded, reconstruct.partial(run=uploaded).expand(image=last))
    published >> cleanup(uploaded)


kmeans_image_clustering()
