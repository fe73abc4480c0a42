"""Operators wrapping the kmeans_ops engine. Heavy imports happen inside execute()."""

from __future__ import annotations

from airflow.sdk import BaseOperator

from kmeans_plugin.links import YARN_KEY, ReportLink, YarnApplicationLink


class KMeansIterationOperator(BaseOperator):
    """One K-means iteration, i.e. one MapReduce job, for a batch of images.

    :param plan: the run's plan (the ``prepare`` task's output): work area, engine, params.
    :param batch: the image ids of this job.
    :param iteration: 1-based iteration number; reads ``clusters-(i-1)``, writes ``clusters-i``.

    Returns ``{image id: figures}`` (sse, max_shift, reseeded, converged). With the Hadoop engine the
    task links to its YARN application.
    """

    operator_extra_links = (YarnApplicationLink(),)
    template_fields = ("plan", "batch")  # XCom arguments are resolved through template fields
    ui_color = "#c6e2ff"

    def __init__(self, *, plan: dict, batch: list[str], iteration: int, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        self.batch = batch
        self.iteration = iteration

    def execute(self, context):
        from kmeans_ops.engines import get_engine
        from kmeans_ops.workarea import WorkArea

        from kmeans_ops.run import batch_label

        context["batch_label"] = batch_label([self.plan["images"].get(i, i) for i in self.batch])  # map_index_template
        engine = get_engine(self.plan["engine"])
        area = WorkArea(self.plan["work"])
        self.log.info("iteration %d: one %s job for %d image(s): %s", self.iteration, engine.name,
                      len(self.batch), ", ".join(self.batch))
        try:
            figures = engine.iterate(area, list(self.batch), self.iteration, float(self.plan["params"]["delta"]))
        except RuntimeError as err:  # HDFS or the Hadoop job failed: one line, the task log tail below it
            lines = str(err).splitlines() or [type(err).__name__]
            for line in lines[1:]:
                self.log.error("  | %s", line)
            raise type(err)(lines[0]) from None
        context["ti"].xcom_push(key=YARN_KEY, value=engine.last_job.get("tracking_url", ""))
        for image_id, f in figures.items():
            self.log.info("%s: sse %.6g, largest shift %.4f, re-seeded %s, %s", image_id, f["sse"], f["max_shift"],
                          f["reseeded"] or "none", "converged" if f["converged"] else "moving")
        return figures


#: XCom key of the exit decision, set by the iteration that exits.
EXIT_KEY = "kmeans_exit"


class ConvergenceOperator(BaseOperator):
    """The convergence check after iteration ``i``: go on to iteration i+1, or exit.

    Goes on while some image is still moving and ``i`` is below ``max_iterations``: then it
    returns the images still moving, in batches of the plan's ``batch_size`` (what the next
    iteration's MapReduce task is mapped over), and pushes the run's plan (XCom ``plan``): both
    travel along the chain of iterations. Exiting skips every later iteration's tasks at
    once (``skip_on_exit``): a plain branch would skip only its direct downstream and leave the
    skip to cascade one iteration per scheduler loop through the unrolled chain.

    :param plan_from: the task whose XCom ``plan`` this iteration started from (the previous
        iteration's check, or upload): read at run time, so the graph has no extra edge.
    :param figures: the iteration's MapReduce results, one ``{image id: figures}`` per job.
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
        jobs = list(self.figures or [])
        moving = [image_id for job in jobs for image_id, f in job.items() if not f["converged"]]
        total = sum(len(job) for job in jobs)
        limit = min(int(plan["params"]["max_iter"]), self.bound)
        going_on = bool(moving) and self.iteration < limit
        ti.xcom_push(key="plan", value=plan)
        if going_on:
            self.log.info("iteration %d: %d of %d image(s) still moving: next iteration", self.iteration,
                          len(moving), total)
            return job_batches(moving, int(plan["batch_size"]))
        run_total = len(plan["images"])  # images converged in earlier iterations left the batches
        if moving:
            summary = (f"Stopped at iteration {self.iteration} (max_iterations): {run_total - len(moving)} of "
                       f"{run_total} image(s) converged")
        else:
            summary = f"Converged at iteration {self.iteration}: all {run_total} image(s)"
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

    def run_info(self, started: float | None, now: float) -> dict:
        """The run's description for summary.json and the report: ids, engine, params, output, its
        wall time so far and, with a timeline, the seconds of each stage."""
        info = {key: self.plan[key] for key in ("run_id", "dag_id", "engine", "params", "output")}
        info["wall_seconds"] = now - started if started is not None else None
        if self.plan.get("timeline"):
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
                started = context["dag_run"].start_date
                info = self.run_info(started.timestamp() if started else None, time.time())
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
        return final
