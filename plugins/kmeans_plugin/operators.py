"""Operators wrapping the kmeans_ops engine. Heavy imports happen inside execute()."""

from __future__ import annotations

from airflow.sdk import BaseOperator

from kmeans_plugin.links import OUTPUTS_KEY, YARN_KEY, OutputsLink, YarnApplicationLink


class KMeansIterationOperator(BaseOperator):
    """One K-means iteration, i.e. one MapReduce job, for a batch of images.

    :param plan: the run's plan (the ``prepare`` task's output): work area, engine, params.
    :param batch: the image ids of this job.
    :param iteration: 1-based iteration number; reads ``clusters-(i-1)``, writes ``clusters-i``.

    Returns ``{image id: figures}`` (sse, max_shift, reseeded, converged). With the Hadoop engine the
    task links to its YARN application.
    """

    operator_extra_links = (YarnApplicationLink(), OutputsLink())
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

        engine = get_engine(self.plan["engine"])
        area = WorkArea(self.plan["work"])
        self.log.info("iteration %d: one %s job for %d image(s): %s", self.iteration, engine.name,
                      len(self.batch), ", ".join(self.batch))
        figures = engine.iterate(area, list(self.batch), self.iteration, float(self.plan["params"]["delta"]))
        job = getattr(engine, "last_job", None) or {}
        context["ti"].xcom_push(key=YARN_KEY, value=job.get("tracking_url", ""))
        context["ti"].xcom_push(key=OUTPUTS_KEY, value=area.root if "://" in area.root else f"file://{area.root}")
        for image_id, f in figures.items():
            self.log.info("%s: sse %.6g, largest shift %.4f, re-seeded %s, %s", image_id, f["sse"], f["max_shift"],
                          f["reseeded"] or "none", "converged" if f["converged"] else "moving")
        return figures


class ConvergenceOperator(BaseOperator):
    """The convergence check after iteration ``i``: go on to iteration i+1, or exit.

    Goes on while some image is still moving and ``i`` is below ``max_iterations``. It branches by
    skipping: going on skips this iteration's ``exit``; exiting skips every later iteration's
    tasks at once (``skip_on_exit``). A plain branch would skip only its direct downstream and leave
    the skip to cascade one iteration at a time through the unrolled chain.

    :param plan: the run's plan (for ``max_iterations``).
    :param figures: the iteration's MapReduce results, one ``{image id: figures}`` per job.
    """

    template_fields = ("plan", "figures")
    ui_color = "#ffefc6"

    def __init__(self, *, plan: dict, figures, iteration: int, bound: int, skip_on_continue: list[str],
                 skip_on_exit: list[str], **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        self.figures = figures
        self.iteration = iteration
        self.bound = bound
        self.skip_on_continue = skip_on_continue
        self.skip_on_exit = skip_on_exit

    def execute(self, context):
        from airflow.providers.common.compat.sdk import DownstreamTasksSkipped

        jobs = list(self.figures or [])
        moving = sum(not f["converged"] for job in jobs for f in job.values())
        total = sum(len(job) for job in jobs)
        limit = min(int(self.plan["params"]["max_iter"]), self.bound)
        going_on = moving > 0 and self.iteration < limit
        if going_on:
            self.log.info("iteration %d: %d of %d image(s) still moving: next iteration", self.iteration, moving, total)
        elif moving:
            self.log.info("iteration %d: max_iterations (%d) reached with %d image(s) still moving: exit",
                          self.iteration, limit, moving)
        else:
            self.log.info("iteration %d: all %d image(s) converged: exit", self.iteration, total)
        skip = self.skip_on_continue if going_on else self.skip_on_exit
        if skip:
            raise DownstreamTasksSkipped(tasks=list(skip))
