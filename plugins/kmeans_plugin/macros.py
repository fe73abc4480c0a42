"""Macros for templates: ``{{ macros.kmeans.output_dir(params.output, run_id) }}`` and friends."""

from __future__ import annotations

import os


def default_work_root() -> str:
    """Where runs keep their work areas (kmeans_ops.settings.work_root)."""
    from kmeans_ops.settings import work_root

    return work_root()


def run_key(run_id: str) -> str:
    """The folder-safe name of a run (kmeans_ops.run.run_key)."""
    from kmeans_ops.run import run_key as key

    return key(run_id)


def work_dir(run_id: str, root: str | None = None) -> str:
    """The run's local work area."""
    return os.path.join(root or default_work_root(), run_key(run_id))


def output_dir(output_root: str, run_id: str) -> str:
    """The run's published output folder."""
    return os.path.join(output_root, run_key(run_id))
