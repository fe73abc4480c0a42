"""A listener (runs in the scheduler, or in the process of `dag.test()`): when a run of
kmeans_image_clustering ends, its note says which iteration exited and why, so the grid shows it
at a glance ("Converged at iteration 7: all 6 image(s)").

Tasks cannot set their run's note through the Task SDK; the scheduler can, on the DagRun it holds.
"""

from __future__ import annotations

import logging

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)
DAG_ID = "kmeans_image_clustering"


def exit_summary(session, dag_run_id: int) -> str | None:
    """The exit decision the ConvergenceOperator pushed in this run, if any."""
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    from kmeans_plugin.operators import EXIT_KEY

    row = session.scalars(select(XComModel).where(XComModel.dag_run_id == dag_run_id, XComModel.key == EXIT_KEY)).first()
    return XComModel.deserialize_value(row) if row is not None else None


def _note(dag_run, ending: str) -> None:
    """Set the note in the scheduler's own session and transaction when the run is attached to one
    (the scheduler), else in a session of our own (``dag.test()`` hands over a detached run)."""
    from sqlalchemy.orm import object_session

    from airflow.models import DagRun
    from airflow.utils.session import create_session

    if dag_run.dag_id != DAG_ID:
        return
    session = object_session(dag_run)
    if session is not None:
        _write_note(session, dag_run, ending)
        return
    with create_session() as session:
        _write_note(session, session.get(DagRun, dag_run.id), ending)


def _write_note(session, dag_run, ending: str) -> None:
    if dag_run is None or dag_run.note:  # a note a person wrote is kept
        return
    summary = exit_summary(session, dag_run.id)
    dag_run.note = f"{summary}; {ending}" if summary else ending


@hookimpl
def on_dag_run_success(dag_run, msg: str):
    _note(dag_run, "published")


@hookimpl
def on_dag_run_failed(dag_run, msg: str):
    _note(dag_run, "failed")
