"""Nightly: find images landed since the last night and trigger kmeans_image_clustering for them."""

from __future__ import annotations

import hashlib
import os
import re

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, TriggerRule, dag, task

TARGET_DAG_ID = "kmeans_image_clustering"
#: The params of kmeans_image_clustering a default may set ("input" is filled in by the scan).
#: tests/test_nightly.py checks this list against the DAG itself.
TARGET_PARAMS = ("k", "max_iterations", "delta", "init", "seed", "engine", "output", "batch_size")
#: Files per triggered run: a bigger folder is split into several runs (each image is one mapped
#: ingest task of the triggered run, and [core] max_map_length defaults to 1024).
MAX_FILES_PER_RUN = 500
#: Runs triggered per night (one mapped trigger task each); the rest is found again the next night.
MAX_RUNS_PER_NIGHT = 200

VAR_ROOTS = "kmeans_landing_roots"
VAR_DEFAULTS = "kmeans_nightly_defaults"
VAR_LEDGER = "kmeans_ledger_path"

DOC = f"""
### Nightly K-means of newly landed images

Every night, looks under the **landing roots** for images (JPEG, PNG, BMP, TIFF, WebP; recursively,
hidden files and folders skipped) whose content was never processed, and triggers
`{TARGET_DAG_ID}` for them: **one run per folder**, its new files listed in the run's `input`
(files of that folder processed before are not redone; a folder of more than {MAX_FILES_PER_RUN}
new files gives several runs; at most {MAX_RUNS_PER_NIGHT} runs a night, the rest the next night).
The triggered runs are not waited for (they queue until `{TARGET_DAG_ID}` is unpaused).

A **ledger** (JSON) keyed by the SHA-256 of each file's content remembers what was triggered: a
renamed or copied file is not redone, a changed file (same name, new content) is. Files are
recorded only once their run exists, so a failed trigger is retried the next night.

Tasks: `scan` (find, hash, compare with the ledger, plan the runs) -> `trigger` (one mapped
TriggerDagRunOperator per planned run; skipped when nothing is new) -> `record` (ledger).

**Configuration**, all optional (Admin -> Variables; or `AIRFLOW_VAR_<NAME>` environment variables):

| Variable | Value | Default |
|---|---|---|
| `{VAR_ROOTS}` | JSON list of local folders or `hdfs://` folders (read through WebHDFS), e.g. `["/data/landing", "hdfs://namenode:8020/landing"]` | none: the run logs "no landing roots configured" and triggers nothing |
| `{VAR_DEFAULTS}` | JSON object merged into each triggered run's conf, e.g. `{{"k": 16, "engine": "local", "output": "/data/out"}}`; allowed keys: {", ".join(f"`{p}`" for p in TARGET_PARAMS)} (others fail the run, named) | the params' own defaults |
| `{VAR_LEDGER}` | path of the ledger JSON file | `$AIRFLOW_HOME/kmeans-ledger.json` |

**Params** of a manual run: `landing_roots` (replaces the Variable when not empty) and `dry_run`
(list what would be triggered; trigger nothing, record nothing).
"""


def _variable(name: str, default=None):
    from airflow.sdk import Variable

    return Variable.get(name, default=default)


def _json_variable(name: str, expected: type, example: str):
    """The Variable ``name`` parsed as JSON of type ``expected``, or None when it is not set."""
    import json

    from airflow.sdk.exceptions import AirflowFailException

    raw = _variable(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as err:
        raise AirflowFailException(f"Variable {name} is not valid JSON ({err}); expected e.g. {example}") from None
    if not isinstance(value, expected):
        raise AirflowFailException(f"Variable {name} must be a JSON {expected.__name__}, e.g. {example}; got {raw!r}")
    return value


def _ledger_path() -> str:
    path = _variable(VAR_LEDGER)
    if path and path.strip():
        return os.path.abspath(os.path.expanduser(path.strip()))
    return os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "kmeans-ledger.json")


def _target_output_default() -> str:
    """kmeans_image_clustering's default output folder (same rule as that DAG file)."""
    return os.environ.get("KMEANS_OUTPUT_ROOT") or os.path.join(
        os.environ.get("KMEANS_HOME", os.environ.get("AIRFLOW_HOME", os.path.expanduser("~"))), "kmeans-output"
    )


def check_defaults(defaults: dict) -> None:
    """ValueError naming the keys of ``defaults`` that are not params of kmeans_image_clustering."""
    unknown = sorted(set(defaults) - set(TARGET_PARAMS))
    if unknown:
        raise ValueError(
            f"Variable {VAR_DEFAULTS}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TARGET_PARAMS)}"
        )


def trigger_run_id(nightly_run_id: str, folder: str, digests: list[str]) -> str:
    """The triggered run's id: the same nightly run, folder and files always give the same id, so
    a retried trigger finds its run instead of starting a second one."""
    safe = re.sub(r"[^A-Za-z0-9_:+-]+", "_", nightly_run_id)[:100]
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.basename(folder.rstrip("/")) or "root")[:40]
    key = hashlib.sha256("\n".join([nightly_run_id, folder, *digests]).encode()).hexdigest()[:12]
    return f"nightly__{safe}__{name}-{key}"


def _trigger_kwargs(plan: dict) -> dict:
    return {"conf": plan["conf"], "trigger_run_id": plan["trigger_run_id"]}


@dag(
    dag_id="kmeans_nightly",
    schedule="@daily",
    catchup=False,
    max_active_runs=1,  # one writer of the ledger at a time
    tags=["kmeans", "images", "nightly"],
    doc_md=DOC,
    params={
        "landing_roots": Param(
            [], type="array", items={"type": "string", "minLength": 1}, title="Landing roots",
            description_md=f"Folders to scan, one per line; empty: the Variable `{VAR_ROOTS}`.",
        ),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="List what would be triggered; trigger nothing, record nothing."),
    },
)
def kmeans_nightly():
    @task
    def scan(**context) -> list[dict]:
        """Find the new images and plan one run per folder: [{"trigger_run_id", "conf", "files"}]."""
        import logging

        from airflow.sdk.exceptions import AirflowFailException

        from kmeans_ops import ledger as L

        log = logging.getLogger(__name__)
        params = context["params"]
        roots = list(params.get("landing_roots") or [])
        if roots:
            log.info("landing roots from the run's params: %s", roots)
        else:
            roots = _json_variable(VAR_ROOTS, list, '["/data/landing"]') or []
        if not all(isinstance(r, str) and r.strip() for r in roots):
            raise AirflowFailException(f"landing roots must be non-empty strings, got {roots!r}")
        if not roots:
            log.info("no landing roots configured (Variable %s): nothing to do", VAR_ROOTS)
            return []

        defaults = _json_variable(VAR_DEFAULTS, dict, '{"k": 16, "engine": "local"}') or {}
        try:
            check_defaults(defaults)
        except ValueError as err:
            raise AirflowFailException(str(err)) from None

        from kmeans_plugin.macros import default_work_root

        output = defaults.get("output") or _target_output_default()
        try:
            ledger = L.Ledger.load(_ledger_path())
            found = L.scan(roots, exclude=[output, default_work_root()])
        except (L.LedgerError, NotImplementedError) as err:
            raise AirflowFailException(str(err)) from None
        new = L.new_files(found, ledger)
        log.info("%d image(s) under %s, %d new (ledger %s: %d known)", len(found), roots, len(new),
                 ledger.path, len(ledger))

        plans = []
        for group in L.group_by_folder(new, MAX_FILES_PER_RUN):
            files = [{k: f[k] for k in ("path", "digest", "size")} for f in group["files"]]
            plans.append({
                "trigger_run_id": trigger_run_id(context["run_id"], group["folder"], [f["digest"] for f in files]),
                "conf": {**defaults, "input": [f["path"] for f in files]},
                "files": files,
            })
        if len(plans) > MAX_RUNS_PER_NIGHT:
            log.warning("%d runs planned, triggering the first %d; the rest is found again next night",
                        len(plans), MAX_RUNS_PER_NIGHT)
            plans = plans[:MAX_RUNS_PER_NIGHT]
        for plan in plans:
            log.info("%s %s: %s", "would trigger" if params.get("dry_run") else "will trigger",
                     plan["trigger_run_id"], plan["conf"])
        if params.get("dry_run"):
            log.info("dry run: %d run(s) not triggered, ledger not changed", len(plans))
            return []
        return plans

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def record(plans: list[dict] | None, **context) -> dict:
        """Record in the ledger the files of every planned run that exists (triggered now or by an
        earlier try); fail, after recording the others, if a run is missing (its trigger failed)."""
        import logging

        from airflow.sdk.exceptions import AirflowFailException

        from kmeans_ops import ledger as L

        log = logging.getLogger(__name__)
        if plans is None:  # all_done also runs after a failed scan: this run must fail
            raise AirflowFailException("scan did not finish: nothing triggered, nothing recorded")
        if not plans:
            log.info("nothing triggered, ledger unchanged")
            return {"recorded": 0}
        ti = context["ti"]
        try:
            ledger = L.Ledger.load(_ledger_path())
        except L.LedgerError as err:
            raise AirflowFailException(str(err)) from None
        recorded, missing = L.record_runs(
            ledger, plans, lambda run_id: ti.get_dr_count(dag_id=TARGET_DAG_ID, run_ids=[run_id]) > 0
        )
        log.info("recorded %d new file(s) of %d run(s) in %s", recorded, len(plans) - len(missing), ledger.path)
        if missing:
            raise AirflowFailException(
                f"{len(missing)} trigger(s) failed, their files were not recorded and are tried again next "
                f"night: {', '.join(p['trigger_run_id'] for p in missing)}"
            )
        return {"recorded": recorded}

    plans = scan()
    triggered = TriggerDagRunOperator.partial(
        task_id="trigger",
        trigger_dag_id=TARGET_DAG_ID,
        wait_for_completion=False,
        skip_when_already_exists=True,  # a retry whose run was already created: skip, don't fail
        logical_date=None,  # no logical date: runs triggered in the same instant cannot collide
        map_index_template="{{ task.trigger_run_id }}",
    ).expand_kwargs(plans.map(_trigger_kwargs))
    triggered >> record(plans)


kmeans_nightly()
