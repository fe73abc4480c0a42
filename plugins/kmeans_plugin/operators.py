"""Operators wrapping the kmeans_ops engine. Heavy imports happen inside execute()."""

from __future__ import annotations

import contextlib
import time

from airflow.providers.common.compat.sdk import conf
from airflow.sdk import BaseOperator

from kmeans_plugin.links import YARN_KEY, ReportLink, YarnApplicationLink


def log_bytes_read(log) -> None:
    """How much HDFS data passed through this task's process (kmeans_ops.hdfs.BYTES_READ): with
    images in HDFS and the cluster doing ingest and reconstruction, a few KB of results."""
    import sys

    hdfs = sys.modules.get("kmeans_ops.hdfs")
    if hdfs is not None:
        log.info("HDFS bytes read by this task: %d", hdfs.BYTES_READ[0])


class EngineJobOperator(BaseOperator):
    """Base of the operators whose work is a job of a kmeans_ops engine, for a batch of images.

    ``execute`` starts the work (:meth:`start`: submit the engine's job, do what runs in the task);
    a job that is not over when submitted (a Hadoop job on YARN) is then waited for:

    - ``deferrable=True``: the task defers on :class:`~kmeans_plugin.triggers.YarnApplicationTrigger`
      and holds no worker slot while YARN works; the triggerer polls the ResourceManager and its
      progress lines go to the task's log; on the application's end the task resumes in
      :meth:`execute_complete` on a worker. A job the engine retries (a failure in uber mode) is
      deferred on again. Needs a running triggerer (``airflow triggerer``; ``standalone`` starts one).
    - ``deferrable=False`` (the default, ``[operators] default_deferrable``): the task waits in its
      worker slot (``engine.wait``, progress lines in the task log every few seconds).

    Then :meth:`finish` makes the task's result from the job's (``engine.collect``). An engine error
    (HDFS, a failed job) fails the task with its first line; the lines after it (the failing
    task's stderr tail) are logged before, each starting with ``  | ``. ``on_kill`` kills the YARN
    application the task is waiting for; a deferred task marked failed or cleared has its
    application killed by the trigger. An application killed on YARN is not run again by the
    engine (its retry is for a job that failed in uber mode): the task fails, naming it.

    :param plan: the run's plan (the ``prepare``/``upload`` output): work areas, engine, params.
    :param batch: this task's images (ids, or image records).
    :param deferrable: defer while YARN runs the job (see above).
    """

    operator_extra_links = (YarnApplicationLink(),)
    template_fields = ("plan", "batch")  # XCom arguments are resolved through template fields

    def __init__(self, *, plan: dict, batch: list,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False), **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        self.batch = batch
        self.deferrable = deferrable
        self._waiting: dict | None = None  # the job this task is waiting for, for on_kill

    # ------------------------------------------------------------ what subclasses say
    def names(self) -> list[str]:
        """The batch's image names, for the mapped task's label (``map_index_template``)."""
        return [image["stem"] for image in self.batch]

    def start(self, context, engine) -> tuple[dict | None, dict]:
        """Submit the batch's job (None: no job) and do the work that stays in the task; returns the
        job and a small JSON-able state handed to :meth:`finish` (also across a deferral)."""
        raise NotImplementedError

    def finish(self, context, result, **state):
        """The task's return value, from the job's result (None when there was no job) and ``state``."""
        raise NotImplementedError

    # ------------------------------------------------------------ the job's life
    def execute(self, context):
        engine = self._begin(context)
        with one_line(self.log):
            job, state = self.start(context, engine)
            result = None if job is None else self.follow(context, engine, job, state)
        try:
            return self.finish(context, result, **state)
        finally:
            log_bytes_read(self.log)

    def execute_complete(self, context, event: dict | None = None, job: dict | None = None, **state):
        """Resumed after the trigger's event (``{"final": ...}`` or ``{"error": ...}``)."""
        from kmeans_ops.engines.yarn import HadoopJobError

        engine = self._begin(context)
        if job is None:  # `airflow dags test` passes the event alone (Airflow 3.3): the job is in XCom
            job, state = self._resume_from_xcom(context)
        with one_line(self.log):
            if (event or {}).get("error") or "final" not in (event or {}):
                raise HadoopJobError(f"{(event or {}).get('error') or 'the trigger gave no final state'}; "
                                     f"application {job.get('application_id')}, tracking URL "
                                     f"{job.get('tracking_url') or '-'}")
            job["final"] = event["final"]
            result = self.follow(context, engine, job, state)
        try:
            return self.finish(context, result, **state)
        finally:
            log_bytes_read(self.log)

    def follow(self, context, engine, job: dict, state: dict):
        """Wait for ``job`` (defer, or block in the task), run the engine's retry if it makes one,
        and return the job's result (``engine.collect``)."""
        from datetime import timedelta

        from kmeans_ops import settings

        while True:
            context["ti"].xcom_push(key=YARN_KEY, value=job.get("tracking_url") or "")
            if "final" not in job and not job.get("done"):
                if self.deferrable and job.get("application_id"):
                    from kmeans_plugin.triggers import YarnApplicationTrigger

                    timeout = float(getattr(engine, "timeout", None) or settings.hadoop_timeout())
                    trigger = YarnApplicationTrigger.for_job(job, timeout)
                    context["ti"].xcom_push(key=RESUME_KEY, value={"job": job, "state": state})
                    self.log.info("%s: %s submitted; the task defers while YARN runs it (the triggerer follows "
                                  "it)", job["what"], job["application_id"])
                    # the trigger kills the job at its deadline; this backstop fails the task if no
                    # triggerer runs at all
                    self.defer(trigger=trigger, method_name="execute_complete", kwargs={"job": job, **state},
                               timeout=timedelta(seconds=max(trigger.deadline - time.time(), 0) + DEFER_MARGIN))
                self._waiting = job
                try:
                    job = engine.wait(job, say=self.log.info)
                finally:
                    self._waiting = None
            # an application killed on YARN is not run again (the engine's retry is for a job
            # that failed in uber mode): someone stopped it
            again = None if (job.get("final") or {}).get("state") == "KILLED" else engine.retry(job)
            if again is None:
                return engine.collect(job)
            job = again

    def on_kill(self) -> None:
        job = self._waiting
        if job and job.get("application_id") and "final" not in job:
            from kmeans_ops.engines import yarn

            self.log.warning("killing %s (%s)", job["application_id"], job["what"])
            yarn.kill(job["rm"], job["application_id"])

    def _begin(self, context):
        from kmeans_ops.engines import get_engine
        from kmeans_ops.run import batch_label

        context["batch_label"] = batch_label(self.names())  # map_index_template
        return get_engine(self.plan["engine"])

    def _resume_from_xcom(self, context) -> tuple[dict, dict]:
        saved = context["ti"].xcom_pull(task_ids=self.task_id, key=RESUME_KEY, map_indexes=context["ti"].map_index)
        return dict(saved["job"]), dict(saved["state"])


#: XCom key of the job a task deferred on, and its state (for a resume without its kwargs).
RESUME_KEY = "kmeans_job"
#: Seconds a deferral may outlast the job's own time limit before Airflow fails the task.
DEFER_MARGIN = 120


@contextlib.contextmanager
def one_line(log):
    """An engine error (RuntimeError: HDFS, a Hadoop job) becomes a one-line error of its type; the
    lines after the first (e.g. the failing task's stderr tail) are logged before, as ``  | ...``."""
    try:
        yield
    except RuntimeError as err:
        lines = str(err).splitlines() or [type(err).__name__]
        for line in lines[1:]:
            log.error("  | %s", line)
        raise type(err)(lines[0]) from None


class KMeansIterationOperator(EngineJobOperator):
    """The K-means iterations of one group of the DAG, for a batch of images.

    With one iteration per task (the Hadoop engine always; the embedded engine with the plan's
    ``iterations_per_task`` 1) the task is one MapReduce job: iteration ``iteration``, which reads
    ``clusters-(i-1)`` and writes ``clusters-i`` (deferrable with the Hadoop engine:
    EngineJobOperator). With N iterations per task (the embedded engine, whose jobs run in the
    task's process) the task is group ``iteration`` of N: it runs iterations (g-1)*N+1 to g*N
    back to back (kmeans_ops.driver.run_iterations, the CLI's loop, with one engine, so the
    embedded engine's tables and Hamerly bounds stay in memory between them), each image leaving
    the batch once it converged or reached ``max_iterations``; every iteration writes its
    ``clusters-i`` and ``stats-i`` files as one job does, and logs its lines.

    :param plan: the run's plan (the ``upload`` or previous ``converge`` task's): work area, engine,
        params, ``iterations_per_task``.
    :param batch: the image ids of this job.
    :param iteration: the 1-based group number (the iteration itself with one iteration per task).
    :param deferrable: with the Hadoop engine, wait for the job in the triggerer (EngineJobOperator).

    Returns ``{image id: figures}`` (sse, max_shift, reseeded, converged, iteration) of each image's
    last iteration in this task. With the Hadoop engine the task links to its YARN application.
    """

    ui_color = "#c6e2ff"

    def __init__(self, *, iteration: int, **kwargs):
        super().__init__(**kwargs)
        self.iteration = iteration

    def names(self) -> list[str]:
        return [self.plan["images"].get(i, i) for i in self.batch]

    def start(self, context, engine):
        from kmeans_ops.driver import run_iterations
        from kmeans_ops.params import Params
        from kmeans_ops.run import group_iterations
        from kmeans_ops.workarea import WorkArea

        per_task = per_task_of(self.plan, engine)
        params = Params.from_json(self.plan["params"])
        area = WorkArea(self.plan["work"])
        if per_task == 1:
            self.log.info("iteration %d: one %s job for %d image(s): %s", self.iteration, engine.name,
                          len(self.batch), ", ".join(self.batch))
            job = engine.submit("iterate", area=area, image_ids=list(self.batch), iteration=self.iteration,
                                delta=params.delta)
            return job, {}
        steps = group_iterations(self.iteration, per_task, params.max_iter)
        self.log.info("iterations %d-%d (group %d of %d iterations): %d image(s): %s", steps.start, steps.stop - 1,
                      self.iteration, per_task, len(self.batch), ", ".join(self.batch))
        last: dict[str, dict] = {}

        def progress(iteration, active, figures):
            self.log.info("iteration %d: one %s job for %d image(s): %s", iteration, engine.name, len(active),
                          ", ".join(active))
            self.log_figures(figures)
            last.update(figures)

        run_iterations(area, list(self.batch), engine, params, progress, first=steps.start, last=steps.stop - 1)
        return None, {"figures": {image_id: last[image_id] for image_id in self.batch}}

    def finish(self, context, result, figures=None):
        if figures is not None:  # iterations run in the task: logged as they went
            return figures
        self.log_figures(result)
        return result

    def log_figures(self, figures: dict) -> None:
        for image_id, f in figures.items():
            self.log.info("%s: sse %.6g, largest shift %.4f, re-seeded %s, %s", image_id, f["sse"], f["max_shift"],
                          f["reseeded"] or "none", "converged" if f["converged"] else "moving")


def per_task_of(plan: dict, engine) -> int:
    """K-means iterations per ``mapreduce`` task in this run: the plan's ``iterations_per_task``
    with an engine whose jobs run in the task's process (the embedded one), else 1 (one YARN job
    per task). A plan from before the param: 1."""
    return int(plan.get("iterations_per_task") or 1) if engine.in_process else 1


class KMeansIngestOperator(EngineJobOperator):
    """Ingest a batch of planned images (``{"path", "stem", "image_id"}``): colour table, points
    and initial clusters files of each (a bad image is reported, the others go on).

    With the Hadoop engine and one palette per image, the batch's images in HDFS are ingested by a
    map-only job on the cluster straight into the run's work area in HDFS (kmeans_ops.placement;
    deferrable as EngineJobOperator); the others are ingested in the task into the local work area
    (``plan["work"]``), which ``upload`` stages, while the job runs. Returns one record per image,
    in the batch's order (kmeans_ops.ingest.ingest_batch's).
    """

    ui_color = "#e8dcff"

    def start(self, context, engine):
        from kmeans_ops import placement
        from kmeans_ops.ingest import ingest_batch
        from kmeans_ops.params import Params
        from kmeans_ops.workarea import WorkArea

        remote = [i for i in self.batch if placement.ingested_on_cluster(engine, self.plan["params"], i)]
        job = None
        if remote:
            area = engine.area_for(self.plan["key"])
            self.log.info("ingest of %d image(s) in HDFS by a job on the cluster, into %s", len(remote), area.root)
            job = engine.submit("ingest", images=remote, area=area, params=self.plan["params"])
        local = [i for i in self.batch if i not in remote]
        done = ingest_batch(local, WorkArea(self.plan["work"]), Params.from_json(self.plan["params"]), self.log) if local else []
        return job, {"done": done, "remote": [i["image_id"] for i in remote]}

    def finish(self, context, result, done, remote):
        from kmeans_ops import placement
        from kmeans_ops.errors import shown

        for r in result or []:  # the node's own lines are in the job's task logs
            if not r["ok"]:
                self.log.error("skipped %s", r["error"])
                continue
            for warning in r.get("warnings") or []:
                self.log.warning("%s: %s", shown(r["path"]), warning)
            self.log.info("ingested %s on the cluster: %d distinct colours, k=%s", shown(r["path"]),
                          r["distinct_colours"], r["k"])
        return placement.interleave(self.batch, set(remote), result or [], done)


class KMeansReconstructOperator(EngineJobOperator):
    """Reconstruct a batch of images (``{"image_id", "stem", "iterations", "converged"}``) in their
    K colours, with their figures, into the run's staging folder.

    With the Hadoop engine, an ``hdfs://`` output and images the cluster ingested, those images are
    reconstructed by a map-only job on the cluster, which writes their outputs into the staging
    folder in HDFS (kmeans_ops.placement; deferrable as EngineJobOperator); the others in the task
    (their files fetched from the engine's work area), while the job runs. Returns one record per
    image, in the batch's order (kmeans_ops.reconstruct.reconstruct_batch's).
    """

    ui_color = "#d4ecff"

    def start(self, context, engine):
        from kmeans_ops import placement
        from kmeans_ops.publish import final_dir, staging_dir
        from kmeans_ops.reconstruct import reconstruct_batch
        from kmeans_ops.workarea import WorkArea

        plan = self.plan
        area, unit = WorkArea(plan["work"]), plan.get("palette_unit")
        staging, final = staging_dir(plan["output"], plan["key"]), final_dir(plan["output"], plan["key"])
        extra = {"params": plan["params"], "engine": plan["engine"], "run_id": plan["run_id"]}
        if unit:
            extra["palette"] = plan["palette"]
        options = {"labels": plan["params"]["labels"], "dither": plan["params"]["dither"], "palette_unit": unit,
                   "skip_if_larger": plan["params"].get("skip_if_larger", False)}
        on_cluster = placement.reconstructed_on_cluster(engine, plan)
        remote = [i for i in self.batch if i["image_id"] in on_cluster]
        job = None
        if remote:
            self.log.info("reconstruction of %d image(s) by a job on the cluster, into %s", len(remote), staging)
            job = engine.submit("reconstruct", images=remote, area=area, staging=staging, final=final, extra=extra,
                                options=options)
        local = [i for i in self.batch if i["image_id"] not in on_cluster]
        if unit and local:  # the shared palette's files, once for the batch (the images' own stayed local)
            engine.fetch(area, unit, plan["local_work"])
        work = WorkArea(plan["local_work"])
        in_task = unit or plan.get("searched")  # a shared palette, or k auto: the files stayed local
        done = reconstruct_batch(
            local, (lambda image_id: work) if in_task else (lambda image_id: engine.fetch(area, image_id, work.root)),
            staging, final, extra, self.log, options) if local else []
        return job, {"done": done, "remote": [i["image_id"] for i in remote]}

    def finish(self, context, result, done, remote):
        from kmeans_ops import placement
        from kmeans_ops.errors import shown

        for r in result or []:  # the node's own lines are in the job's task logs
            if not r["ok"]:
                self.log.error("reconstruction of %s failed: %s", shown(r["source"]), r["error"])
                continue
            psnr = "inf" if r.get("psnr") is None else f"{r['psnr']:.2f}"
            self.log.info("reconstructed %s on the cluster: k=%s, PSNR %s dB, %.2f s -> %s", shown(r["stem"]),
                          r.get("k"), psnr, r.get("seconds") or 0.0, shown(r["json"]))
        return placement.interleave(self.batch, set(remote), result or [], done)


class KMeansSearchOperator(BaseOperator):
    """``k`` "auto": the quality search of the run's images (kmeans_ops.search.search_run), in place
    of the iterations, which ``upload`` then skipped; skipped itself when K is given. Each batch's
    candidates are iterated by one job of the engine per iteration, in this task (a Hadoop job is
    waited for in the worker slot, not deferred). Pushes the plan (XCom ``plan``) with each image's
    chosen candidate (``searched``) for ``finals``; an image that cannot reach MIN is moved to the
    plan's failures (one line) and the others go on; fails when none can.

    :param plan_from: the task whose XCom ``plan`` the search starts from (``upload``).
    """

    ui_color = "#ffe0c6"

    def __init__(self, *, plan_from: str, **kwargs):
        super().__init__(**kwargs)
        self.plan_from = plan_from

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from kmeans_ops.engines import get_engine
        from kmeans_ops.params import Params
        from kmeans_ops.search import search_run

        plan = context["ti"].xcom_pull(task_ids=self.plan_from, key="plan")
        if not Params.from_json(plan["params"]).auto:
            raise AirflowSkipException("k is given: no quality search")
        with one_line(self.log):
            plan = search_run(plan, get_engine(plan["engine"]), say=self.log.info)
        for f in plan["failures"]:
            if f["stage"] == "search":
                self.log.error("%s", f["error"])
        if not plan["searched"]:
            raise AirflowFailException("no image reaches the minimum quality: "
                                       + "; ".join(f["error"] for f in plan["failures"] if f["stage"] == "search"))
        for image_id, found in plan["searched"].items():
            self.log.info("%s: k=%d chosen of %d K tried", plan["images"][image_id], found["quality"]["chosen_k"],
                          len(found["quality"]["candidates"]))
        context["ti"].xcom_push(key="plan", value=plan)
        return {image_id: found["quality"]["chosen_k"] for image_id, found in plan["searched"].items()}


#: XCom key of the exit decision, set by the iteration that exits.
EXIT_KEY = "kmeans_exit"


class ConvergenceOperator(BaseOperator):
    """The convergence check after iteration group ``i``: go on to group i+1, or exit.

    Group ``i`` ran iterations up to ``i * N`` (N: the plan's ``iterations_per_task``, 1 with the
    Hadoop engine; kmeans_ops.run.group_iterations). Goes on while some image is still moving and
    that last iteration is below ``max_iterations``: then it returns the images still moving, in
    batches of the plan's ``batch_size`` (what the next group's MapReduce task is mapped over),
    and pushes the run's plan (XCom ``plan``) with each image's state so far (``state``: its last
    iteration and whether it converged): both travel along the chain of groups. Exiting skips
    every later group's tasks at once (``skip_on_exit``): a plain branch would skip only its
    direct downstream and leave the skip to cascade one group per scheduler loop through the
    unrolled chain.

    :param plan_from: the task whose XCom ``plan`` this group started from (the previous group's
        check, or upload): read at run time, so the graph has no extra edge.
    :param figures: the group's MapReduce results, one ``{image id: figures}`` per job (each
        image's last iteration in the group).
    :param iteration: the group's number, from 1.
    :param bound: the number of groups (parse time).
    """

    template_fields = ("figures",)
    ui_color = "#ffefc6"

    def __init__(self, *, plan_from: str, figures, iteration: int, bound: int, skip_on_exit: list[str], **kwargs):
        super().__init__(**kwargs)
        self.plan_from = plan_from
        self.figures = figures
        self.iteration = iteration
        self.bound = bound
        self.skip_on_exit = skip_on_exit

    def execute(self, context):
        from airflow.providers.common.compat.sdk import DownstreamTasksSkipped

        from kmeans_ops.run import job_batches

        ti = context["ti"]
        plan = ti.xcom_pull(task_ids=self.plan_from, key="plan")
        # a mapped task's results in one request (iterating a lazy sequence asks one item at a time)
        jobs = [job for job in (self.figures[:] if self.figures is not None else []) if job]
        moving = [image_id for job in jobs for image_id, f in job.items() if not f["converged"]]
        total = sum(len(job) for job in jobs)
        per_task = int(plan.get("iterations_per_task") or 1)
        limit = min(int(plan["params"]["max_iter"]), self.bound * per_task)
        reached = min(self.iteration * per_task, limit)  # the group's last iteration
        ran = max((f["iteration"] for job in jobs for f in job.values()), default=reached)
        going_on = bool(moving) and reached < limit
        state = {**(plan.get("state") or {}),
                 **{image_id: {"iterations": f["iteration"], "converged": f["converged"]}
                    for job in jobs for image_id, f in job.items()}}
        ti.xcom_push(key="plan", value={**plan, "state": state})
        what = f"iteration {self.iteration}" if per_task == 1 else f"iteration group {self.iteration} (to {reached})"
        if going_on:
            self.log.info("%s: %d of %d image(s) still moving: next iteration", what, len(moving), total)
            return job_batches(moving, int(plan["batch_size"]))
        run_total = len(plan["images"])  # images converged in earlier iterations left the batches
        if moving:
            summary = (f"Stopped at iteration {ran} (max_iterations): {run_total - len(moving)} of "
                       f"{run_total} image(s) converged")
        else:
            summary = f"Converged at iteration {ran}: all {run_total} image(s)"
        self.log.info("%s: exit", summary)
        ti.xcom_push(key=EXIT_KEY, value=summary)  # the run's note (kmeans_plugin.listener)
        if self.skip_on_exit:
            raise DownstreamTasksSkipped(tasks=list(self.skip_on_exit))


class PublishOperator(BaseOperator):
    """Publish a run: its images, JSON figures, ``summary.json`` and ``report.html`` appear together
    in ``<output>/<run key>/`` (and ``<output>/latest``), by kmeans_ops.publish.

    :param plan: the run's plan: ``output``, ``key``, ``run_id``, ``dag_id``, ``engine``, ``params``,
        ``failures`` (images that failed before reconstruction) and, when the DAG keeps one,
        ``timeline`` (``[stage, end time]`` marks, for the report's time per stage).
    :param results: the reconstruction results, one dict per image (``ok``; for an image done,
        ``seconds`` and its figures: ``figures``, inline, or else ``json``, the path of its JSON
        file in the staging folder, local or ``hdfs://``), or a list of such lists (one per mapped
        task), which is flattened.

    ``plan["output"]`` may be an ``hdfs://`` folder (engine hadoop): the same rules, by HDFS renames
    (kmeans_ops.publish). Returns the published folder (a path or an ``hdfs://`` URI). A cleared
    and re-run task whose run is already published (no staging folder left, the final one there)
    publishes nothing again. Fails without retry when
    publishing would replace a folder that is not a published run (PublishError), and, after
    publishing the report of the failures, when no image could be reconstructed. Each Asset in
    ``outlets`` gets the event extra ``{"folder": <published folder>, "run_id": ...}``. Its
    **Report** link opens the run's report, served by the plugin's results app.
    """

    operator_extra_links = (ReportLink(),)
    template_fields = ("plan", "results")  # XCom arguments are resolved through template fields
    ui_color = "#d4f0d4"

    def __init__(self, *, plan: dict, results, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        self.results = results

    @staticmethod
    def flatten(results) -> list[dict]:
        """Per-image result dicts, from a list of them or a list of lists of them. A mapped task's
        results (a lazy XCom sequence) are read in one request, by slicing: iterating would ask
        for one item at a time and end on a logged "XCom not found"."""
        flat: list[dict] = []
        for item in (results[:] if results else []):
            if isinstance(item, dict):
                flat.append(item)
            else:
                flat.extend(item or [])
        return flat

    @staticmethod
    def figures_of(result: dict) -> dict:
        """An image's figures: inline (``result["figures"]``, as a reconstruction on the cluster
        returns them) or read from its JSON file ``result["json"]`` (local or ``hdfs://``)."""
        import json

        from kmeans_ops.paths import filesystem

        figures = result["figures"] if isinstance(result.get("figures"), dict) else json.loads(
            filesystem(result["json"]).read_bytes(result["json"]))
        if isinstance(result.get("thumbnails"), str):  # made on the node (kmeans_ops.engines.stages)
            thumbnails = result["thumbnails"]
            figures = {**figures, "thumbnails": json.loads(filesystem(thumbnails).read_bytes(thumbnails))}
        return figures

    @staticmethod
    def stages(marks: list, started: float | None) -> list[list]:
        """``[stage, seconds]`` from ``[stage, end time]`` marks: the first stage from ``started``
        (the run's start; no first stage when unknown), each next one from the previous mark."""
        first = [[marks[0][0], marks[0][1] - started]] if marks and started is not None else []
        return first + [[name, end - start] for (_, start), (name, end) in zip(marks, marks[1:])]

    def run_info(self, started: float | None, now: float, task_instances: list[dict] | None = None) -> dict:
        """The run's description for summary.json and the report: ids, engine, params, output, its
        wall time so far and the seconds of each stage: from the run's task instances
        (``[stage, seconds, waiting, running]``, kmeans_ops.stagetimes) when they could be read,
        else from the plan's timeline (``[stage, seconds]``)."""
        from kmeans_ops.stagetimes import breakdown

        info = {key: self.plan[key] for key in ("run_id", "dag_id", "engine", "params", "output")}
        info["wall_seconds"] = now - started if started is not None else None
        if task_instances and started is not None:
            info["stages"] = [[s["name"], s["seconds"], s["waiting"], s["running"]]
                              for s in breakdown(task_instances, started, now)]
        elif self.plan.get("timeline"):
            info["stages"] = self.stages(list(self.plan["timeline"]) + [["reconstruct", now]], started)
        return info

    def execute(self, context):
        import time

        from airflow.sdk import Asset
        from airflow.sdk.exceptions import AirflowFailException

        from kmeans_ops.errors import shown
        from kmeans_ops.publish import PublishError, already_published, final_dir, publish
        from kmeans_ops.storage import is_full

        plan = self.plan
        results = self.flatten(self.results)
        failures = list(plan.get("failures") or []) + [r for r in results if not r["ok"]]
        final = final_dir(plan["output"], plan["key"])
        try:
            if already_published(plan["output"], plan["key"]):
                self.log.info("already published: %s", final)  # a cleared and re-run publish
            else:
                figures = [{**self.figures_of(r), "seconds": r.get("seconds")} for r in results if r["ok"]]
                from kmeans_plugin.timings import run_task_instances

                started = context["dag_run"].start_date
                tis = run_task_instances(plan["dag_id"], plan["run_id"])
                info = self.run_info(started.timestamp() if started else None, time.time(), tis)
                publish(plan["output"], plan["key"], figures, failures, info,
                        replace=bool(plan.get("replace_published")))
        except PublishError as err:
            raise AirflowFailException(str(err)) from None
        except OSError as err:  # one line: a full disk, a folder that vanished, permissions
            where = shown(err.filename) if err.filename else shown(plan["output"])
            problem = "no space left" if is_full(err) else (err.strerror or type(err).__name__)
            raise RuntimeError(f"publishing into {shown(plan['output'])} failed: {problem} ({where})") from None
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = {"folder": final, "run_id": plan["run_id"]}
        for f in failures:
            self.log.warning("failed: %s", f["error"])
        if not any(r["ok"] for r in results):
            raise AirflowFailException("no image could be reconstructed: " + "; ".join(f["error"] for f in failures))
        self.log.info("published %s", final)
        log_bytes_read(self.log)
        return final
