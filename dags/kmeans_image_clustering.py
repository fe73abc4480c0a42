"""K-means colour quantisation of images, as MapReduce iterations driven by Airflow."""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Asset, Param, TaskGroup, dag, task
from kmeans_ops import settings
from kmeans_plugin.operators import (ConvergenceOperator, KMeansIngestOperator, KMeansIterationOperator,
                                     KMeansReconstructOperator, KMeansSearchOperator, PublishOperator)

#: Parse-time number of iteration groups. The `max_iterations` param stops earlier, never later.
ITERATION_BOUND = settings.iteration_bound()
#: Default K-means iterations per `mapreduce` task (embedded engine): group NN runs iterations
#: (NN-1)*N+1..NN*N; a run uses as many groups as it needs, fewer than ITERATION_BOUND.
PER_TASK = settings.iterations_per_task()
DEFAULT_OUTPUT = settings.output_root()
STEPS = ("mapreduce", "converge")  # the tasks of one iteration group
RESULTS = Asset(name="kmeans_results", uri=f"file://{os.path.abspath(DEFAULT_OUTPUT)}")

DOC = f"""
### K-means colour quantisation

Redraws each image with its K cluster colours. Give one or more **input** folders, files or glob
patterns; each image's output PNG, its figures (JSON) and an HTML **report** are published together
in `<output>/<run key>/` (and `<output>/latest`).

Pipeline: `prepare` (check params and paths, find images) -> `ingest` (mapped over batches of
images, each labelled with its images: colour table, points and initial clusters files; with the
Hadoop engine, images in HDFS by a job on the cluster) -> `upload` (to the run's work area) ->
`iteration_NN`, a group of iterations: `mapreduce`, one task per batch of images still moving,
then `converge` goes on to the next group or exits, skipping every later one (with `k` "auto",
`search` instead of the iterations: per image the fewest colours reaching `quality`) -> `finals` -> `reconstruct`
(mapped over batches) -> `publish` (**Report** link) -> `cleanup`. With deferrable operators
(`AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=true` and a triggerer), a task waiting on YARN defers and
holds no worker slot.

**Groups of iterations.** With the embedded engine one `mapreduce` task runs `iterations_per_task`
(N, default {PER_TASK}) K-means iterations back to back in its process, each image stopping when it
converged or at `max_iterations`: group `iteration_NN` runs iterations (NN-1)*N+1 to NN*N (with
N={PER_TASK}: `iteration_01` runs 1-{PER_TASK}, `iteration_02` {PER_TASK + 1}-{2 * PER_TASK}, ...), so a run of 21
iterations is 3 groups, not 21; the results are the same for any N. With the Hadoop engine every
task is one YARN job, one iteration: group NN is iteration NN. Up to {ITERATION_BOUND} groups
(parse-time bound); `max_iterations` stops earlier; the run's note says which iteration exited. A bad image is reported and the others go on; a run where every
image fails is marked failed. `palette` "run" clusters all the images together (one palette, one
job per iteration); a palette file applies fixed colours; `labels` writes label maps; `dither`
diffuses the error. Every path param must lie under the allowed roots (Variable
`kmeans_allowed_roots`), or `prepare` fails and nothing is read or written.
"""


@dag(
    dag_id="kmeans_image_clustering",
    schedule=None,
    catchup=False,
    max_active_runs=4,
    # Bounds (settings: KMEANS_RUN_TIMEOUT, KMEANS_TASK_TIMEOUT): no run holds worker slots for ever.
    dagrun_timeout=timedelta(seconds=settings.run_timeout()),
    default_args={"execution_timeout": timedelta(seconds=settings.task_timeout())},
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
        "k": Param(settings.DEFAULT_K, type=["integer", "string"], minimum=1, maximum=settings.MAX_K,
                   pattern="^ *(auto|[0-9]+) *$", title="K (colours)", examples=[settings.DEFAULT_K, "auto"],
                   description=f"Number of clusters, i.e. colours in each output image: 1 to {settings.MAX_K}; "
                               f"or 'auto': per image the fewest colours in 2..max_k whose PSNR reaches quality."),
        "quality": Param(None, type=["null", "string"], title="Quality (k auto)", examples=["28-32"],
                         description="With k 'auto' (needed then, refused otherwise): MIN-MAX in PSNR dB, each 1 "
                                     "to 100. Each image gets the fewest colours reaching MAX; an image that "
                                     "cannot reach MIN fails alone, nothing written for it. Palette 'image', "
                                     "init kmeans++ or random, no dithering."),
        "max_k": Param(settings.DEFAULT_MAX_K_AUTO, type="integer", minimum=2, maximum=settings.MAX_K,
                       title="Most colours (k auto)",
                       description=f"With k 'auto': the most colours tried, 2 to {settings.MAX_K}."),
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
        "palette": Param("image", type="string", minLength=1, title="Palette", examples=["image", "run"],
                         description="'image' (the default, as the seed did): each image gets its own K colours; "
                                     "'run': one palette of K colours for all the run's images, so a colour means "
                                     "the same in every image (frames of a video, tiles of a scene); or the path of a "
                                     "clusters file under the allowed roots: a fixed palette applied with no "
                                     "iterations (its K must equal k)."),
        "labels": Param(False, type="boolean", title="Label maps",
                        description="Also write <stem>-labels.png: one channel, each pixel's cluster index "
                                    "(8-bit for K up to 256, else 16-bit), so palette_rgb[label] is its colour."),
        "dither": Param("none", type="string", enum=["none", "floyd-steinberg"], title="Dithering",
                        values_display={"none": "None", "floyd-steinberg": "Floyd-Steinberg error diffusion"},
                        description="Error diffusion with the same palette, so gradients do not band; "
                                    "needs K of 256 or less."),
        "keep": Param(None, type=["null", "string"], title="Pinned colours",
                      examples=["#ffffff,#000000"],
                      description="Colours in every output palette that K-means never moves (the other K - n "
                                  "are clustered around them): #rrggbb values separated by commas, or the path "
                                  "of a clusters file ('label B G R', whole values 0-255) under the allowed "
                                  "roots; fewer than k; with palette 'image' or 'run'. Empty: none."),
        "skip_if_larger": Param(False, type="boolean", title="Skip if larger",
                                description="Write no output image for an input whose quantised PNG would be "
                                            "larger than the input file (its JSON says skipped: larger)."),
        "engine": Param("local", type="string", enum=["local", "hadoop"], title="Engine",
                        values_display={"local": "Embedded (in-process MapReduce)",
                                        "hadoop": "Hadoop Streaming on YARN, data in HDFS"}),
        "output": Param(DEFAULT_OUTPUT, type="string", minLength=1, title="Output folder",
                        description="Each run publishes into <output>/<run key>/; a local folder, or an "
                                    "hdfs:// one with the Hadoop engine; must lie under the allowed roots "
                                    "(Airflow Variable kmeans_allowed_roots)."),
        "replace_published": Param(False, type="boolean", title="Replace another run's results",
                                   description="Allow this run to replace an output folder published by another "
                                               "run (its summary.json names another run id). Off: such a folder "
                                               "is never replaced and the run fails at prepare."),
        "iterations_per_task": Param(
            PER_TASK, type="integer", minimum=1, maximum=settings.MAX_ITER, title="Iterations per task",
            description=f"Embedded engine: K-means iterations one mapreduce task runs back to back (group "
                        f"iteration_NN runs iterations (NN-1)*N+1 to NN*N), 1 to {settings.MAX_ITER}; fewer "
                        f"Airflow tasks, the same results. 1: one task per iteration. The Hadoop engine runs "
                        f"one iteration (one YARN job) per task whatever this says."),
        "batch_size": Param(settings.DEFAULT_BATCH_SIZE, type="integer", minimum=1, maximum=settings.MAX_BATCH_SIZE,
                            title="Images per job",
                            description=f"Images carried by one MapReduce job: 1 to {settings.MAX_BATCH_SIZE}."),
    },
)
def kmeans_image_clustering():
    @task
    def prepare(**context) -> list[list[dict]]:
        """Validate the parameters and paths once and list the images: the run's plan (XCom
        ``plan``); returns the images in batches, what ingest is mapped over."""
        import time

        from airflow.sdk.exceptions import AirflowFailException

        from kmeans_ops.errors import InputError, shown
        from kmeans_ops.params import ParamError
        from kmeans_ops.run import plan, task_batches
        from kmeans_ops.settings import SettingError

        try:
            run = plan(dict(context["params"]), context["run_id"], context["dag"].dag_id)
        except (ParamError, InputError, SettingError) as err:
            raise AirflowFailException(str(err)) from None
        except (OSError, ValueError) as err:  # a path the OS refuses: one line, never a traceback of ours
            raise AirflowFailException(f"a path param cannot be used: {shown(str(err))}") from None
        images = run.pop("images")
        context["ti"].xcom_push(key="plan", value={**run, "timeline": [["prepare", time.time()]]})
        return task_batches(images)

    @task
    def upload(run: dict, ingested: list[list[dict]], **context) -> list[list[str]]:
        """Put the run's work area where the engine reads it; fail the run if no image is usable.
        Pushes the plan that travels along the iterations (XCom ``plan``); returns the first
        iteration's batches."""
        import time

        from airflow.sdk.exceptions import AirflowFailException

        from airflow.providers.common.compat.sdk import DownstreamTasksSkipped

        from kmeans_ops import palette, placement
        from kmeans_ops.engines import get_engine
        from kmeans_ops.errors import InputError
        from kmeans_ops.params import Params
        from kmeans_ops.run import job_batches
        from kmeans_ops.workarea import WorkArea
        from kmeans_plugin.operators import per_task_of

        ingested = [r for batch in ingested for r in batch]
        good = [r for r in ingested if r["ok"]]
        failures = [{k: r[k] for k in ("source", "error", "stage")} for r in ingested if not r["ok"]]
        if not good:
            raise AirflowFailException(f"all {len(ingested)} image(s) failed: " + "; ".join(f["error"] for f in failures))
        good_ids = [r["image_id"] for r in good]
        params = Params.from_json(run["params"])
        try:  # a shared palette: the union of the images' tables (or the palette file) as one unit
            unit = palette.prepare(WorkArea(run["work"]), good_ids, params)
        except InputError as err:
            raise AirflowFailException(str(err)) from None
        # images the cluster ingested are in its work area already: the others are staged beside them
        engine = get_engine(run["engine"])
        area, on_cluster = placement.stage(engine, WorkArea(run["work"]), run["key"], run["params"], good, unit)
        context["ti"].xcom_push(key="plan", value={
            **run, "work": area.root, "local_work": run["work"], "images": {r["image_id"]: r["stem"] for r in good},
            "on_cluster": on_cluster, "iterations_per_task": per_task_of(run, engine),  # 1 with Hadoop
            "failures": failures, "timeline": run["timeline"] + [["ingest", time.time()]],
            "palette_unit": unit, "palette": palette.describe(params, len(good))})
        if palette.mode(params) == "file" or params.auto:  # a fixed palette: no iteration; k auto: the search
            raise DownstreamTasksSkipped(tasks=[f"iteration_{i:02d}.{name}" for i in range(1, ITERATION_BOUND + 1)
                                                for name in STEPS])
        return job_batches([unit] if unit else good_ids, run["batch_size"])

    images = prepare()
    ingested = KMeansIngestOperator.partial(task_id="ingest", plan=images["plan"],
                                            map_index_template="{{ batch_label }}").expand(batch=images)
    step = upload(images["plan"], ingested.output)
    searched = KMeansSearchOperator(task_id="search", plan_from="upload")  # k auto only: skipped otherwise
    step >> searched

    # The iterations: an unrolled chain of groups. Each converge passes the plan and the batches
    # still moving to the next group (no edge from upload to every group, no join), and on exit
    # skips every later group at once; finals follows the chain's end (trigger rule none_failed).
    for i in range(1, ITERATION_BOUND + 1):
        span = f"{(i - 1) * PER_TASK + 1}-{i * PER_TASK}" if PER_TASK > 1 else f"{i}"
        tooltip = (f"Iteration group {i}: K-means iterations {span} at the default iterations_per_task {PER_TASK} "
                   f"(N per task: iterations {i - 1}*N+1 to {i}*N; Hadoop engine or N=1: iteration {i}); map, "
                   f"combine, reduce per iteration, then the convergence check")
        with TaskGroup(group_id=f"iteration_{i:02d}", tooltip=tooltip):
            mapreduce = KMeansIterationOperator.partial(
                task_id="mapreduce", plan=step["plan"], iteration=i, retries=2, retry_delay=timedelta(seconds=10),
                map_index_template="{{ batch_label }}",
            ).expand(batch=step)
            later = [f"iteration_{j:02d}.{name}" for j in range(i + 1, ITERATION_BOUND + 1) for name in STEPS]
            step = ConvergenceOperator(task_id="converge", plan_from=step.operator.task_id, figures=mapreduce.output,
                                       iteration=i, bound=ITERATION_BOUND, skip_on_exit=later).output

    @task(trigger_rule="none_failed")
    def finals(**context) -> list[list[dict]]:
        """Each image's last iteration and whether it converged, in batches: what reconstruct is
        mapped over. Pushes the plan (XCom ``plan``) from the iteration group that exited."""
        import time

        from kmeans_ops.run import task_batches

        from kmeans_ops.palette import FIXED_STATE

        ti = context["ti"]
        # The groups that ran are 1..g (each converge pushes the plan, with every image's state so
        # far, before it goes on or exits; later groups are skipped): find g by bisection, a few
        # pulls whatever the number of groups, and take its plan. None ran (a palette file, or
        # k auto): the search's plan, with each image's chosen candidate, else upload's.
        plan, low, high = None, 0, ITERATION_BOUND
        while low < high:
            middle = (low + high + 1) // 2
            found = ti.xcom_pull(task_ids=f"iteration_{middle:02d}.converge", key="plan")
            if found is None:
                high = middle - 1
            else:
                low, plan = middle, found
        plan = plan or ti.xcom_pull(task_ids="search", key="plan") or ti.xcom_pull(task_ids="upload", key="plan")
        state = dict(plan.pop("state", None) or {})
        unit = plan.get("palette_unit")
        if unit:  # a shared palette: every image takes the palette unit's state
            state = {image_id: state.get(unit, FIXED_STATE) for image_id in plan["images"]}
        for image_id, found in (plan.get("searched") or {}).items():  # k auto: its chosen candidate unit
            state[image_id] = {**found["state"], "palette_unit": found["unit"], "quality": found["quality"]}
        images = [{"image_id": image_id, "stem": stem, **state[image_id]} for image_id, stem in plan["images"].items()]
        ti.xcom_push(key="plan", value={**plan, "timeline": plan["timeline"] + [["iterations", time.time()]]})
        return task_batches(images)

    @task
    def cleanup(run: dict) -> None:
        """Remove the run's work area once its results are published (the seed never cleaned up)."""
        import shutil

        from kmeans_ops.engines import get_engine
        from kmeans_ops.workarea import WorkArea

        if run["work"] != run["local_work"]:  # staged by the engine (k auto stages each search round alone)
            get_engine(run["engine"]).discard(WorkArea(run["work"]))
        shutil.rmtree(run["local_work"], ignore_errors=True)

    last = finals()
    [step, searched] >> last
    reconstructed = KMeansReconstructOperator.partial(task_id="reconstruct", plan=last["plan"],
                                                      map_index_template="{{ batch_label }}").expand(batch=last)
    published = PublishOperator(task_id="publish", plan=last["plan"], results=reconstructed.output, outlets=[RESULTS])
    published >> cleanup(last["plan"])


kmeans_image_clustering()
