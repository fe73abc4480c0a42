"""Nightly: find images landed since the last night and trigger kmeans_image_clustering for them."""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, TriggerRule, dag, task
from kmeans_ops import settings

TARGET_DAG_ID = "kmeans_image_clustering"
#: The params of kmeans_image_clustering a default may set ("input" is filled in by the scan).
#: tests/test_nightly.py checks this list against the DAG itself.
TARGET_PARAMS = ("k", "quality", "max_k", "max_iterations", "delta", "init", "seed", "palette", "labels", "dither", "keep",
                 "skip_if_larger", "engine", "output", "batch_size", "iterations_per_task", "replace_published")
#: Keys of the defaults Variable that this DAG consumes itself: never forwarded to the triggered runs.
NIGHTLY_KEYS = ("settle_seconds",)

DOC = f"""
### Nightly K-means of newly landed images

Every night, looks under the **landing roots** for images (JPEG, PNG, BMP, TIFF, WebP; recursively,
hidden files and folders skipped) whose content was never processed, and triggers
`{TARGET_DAG_ID}` for them: **one run per folder**, its new files listed in the run's `input`
(files of that folder processed before are not redone; a folder of more than {settings.MAX_FILES_PER_RUN}
new files gives several runs; at most {settings.MAX_RUNS_PER_NIGHT} runs a night, the rest the next night).
The triggered runs are not waited for (they queue until `{TARGET_DAG_ID}` is unpaused).

Only **settled** files are taken: last modified at least `settle_seconds` ago (default
{settings.DEFAULT_SETTLE_SECONDS}) and unchanged (size and modification time) while being hashed. A file
still being written is logged as "not settled", neither triggered nor recorded, and taken by a
later run once it has settled.

A **ledger** (JSON) keyed by each file's content remembers what was triggered: a renamed or
copied file is not redone, a changed file (same name, new content) is. The key of a local file is
the SHA-256 of its bytes; that of a file on HDFS is the file checksum HDFS keeps (WebHDFS
GETFILECHECKSUM: the worker reads none of its bytes). Same bytes, same key, per kind of
filesystem. Files are recorded only once their run exists, so a failed trigger is retried the next
night.

Tasks: `scan` (find the settled files, key them, compare with the ledger, plan the runs) -> `trigger`
(one mapped TriggerDagRunOperator per planned run; skipped when nothing is new) -> `record` (ledger).

**Configuration**, all optional (Admin -> Variables; or `AIRFLOW_VAR_<NAME>` environment variables):

| Variable | Value | Default |
|---|---|---|
| `{settings.VAR_LANDING_ROOTS}` | JSON list of local folders or `hdfs://` folders (read through WebHDFS), e.g. `["/data/landing", "hdfs://namenode:8020/landing"]` | none: the run logs "no landing roots configured" and triggers nothing |
| `{settings.VAR_NIGHTLY_DEFAULTS}` | JSON object, e.g. `{{"k": 16, "engine": "local", "output": "/data/out", "settle_seconds": 600}}`: its keys {", ".join(f"`{p}`" for p in TARGET_PARAMS)} are merged into each triggered run's conf; `settle_seconds` is this DAG's own (not forwarded); other keys fail the run, named | the params' own defaults |
| `{settings.VAR_LEDGER}` | path of the ledger JSON file | `kmeans-ledger.json` in `$KMEANS_HOME`, else `$AIRFLOW_HOME` |

**Params** of a manual run: `landing_roots` (replaces the Variable when not empty), `settle_seconds`
(empty: the Variable's `settle_seconds`, else {settings.DEFAULT_SETTLE_SECONDS}) and `dry_run` (list what would
be triggered; trigger nothing, record nothing).
"""


@contextmanager
def failing_on(*errors: type[Exception]):
    """Turn ``errors`` (a setting or the ledger is unusable: retrying cannot help) into an
    AirflowFailException with the same one-line message, which names the Variable or the file."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except errors as err:
        raise AirflowFailException(str(err)) from None


def check_defaults(defaults: dict) -> None:
    """settings.SettingError (a ValueError) naming the keys of ``defaults`` that are neither params
    of kmeans_image_clustering nor this DAG's own (NIGHTLY_KEYS)."""
    from kmeans_ops.errors import shown

    allowed = (*TARGET_PARAMS, *NIGHTLY_KEYS)
    unknown = sorted(set(defaults) - set(allowed))
    if unknown:  # named on one line each (a key is the Variable's text: control characters escaped)
        raise settings.SettingError(f"Variable {settings.VAR_NIGHTLY_DEFAULTS}: unknown key(s) "
                                    f"{', '.join(shown(key) for key in unknown)}; allowed: {', '.join(allowed)}")


def target_conf(defaults: dict) -> dict:
    """The part of the defaults Variable forwarded to each triggered run (its params only)."""
    return {key: value for key, value in defaults.items() if key in TARGET_PARAMS}


def settle_seconds(param, defaults: dict) -> tuple[int, str]:
    """The run's settling time in seconds, and where it came from: the run's param when given (not
    null), else the defaults Variable's ``settle_seconds``, else settings.DEFAULT_SETTLE_SECONDS.
    settings.SettingError naming the Variable when its value is not an integer >= 0."""
    if param is not None:
        return int(param), "the run's param"
    value = defaults.get("settle_seconds")
    if value is None:
        return settings.DEFAULT_SETTLE_SECONDS, "the default"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise settings.SettingError(f"Variable {settings.VAR_NIGHTLY_DEFAULTS}: settle_seconds must be an "
                                    f"integer >= 0 (seconds)")
    return value, f"Variable {settings.VAR_NIGHTLY_DEFAULTS}"


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
    # Bounds (settings: KMEANS_RUN_TIMEOUT, KMEANS_TASK_TIMEOUT), as for the runs it triggers.
    dagrun_timeout=timedelta(seconds=settings.run_timeout()),
    default_args={"execution_timeout": timedelta(seconds=settings.task_timeout())},
    tags=["kmeans", "images", "nightly"],
    doc_md=DOC,
    params={
        "landing_roots": Param(
            [], type="array", items={"type": "string", "minLength": 1}, title="Landing roots",
            description_md=f"Folders to scan, one per line; empty: the Variable `{settings.VAR_LANDING_ROOTS}`.",
        ),
        "settle_seconds": Param(
            None, type=["null", "integer"], minimum=0, title="Settle time (seconds)",
            description=f"A landed file is taken only once its size and modification time have not changed "
                        f"for this many seconds (an integer >= 0; 0: as soon as it does not change while being "
                        f"hashed); a file not settled yet is left for a later run. Empty: the settle_seconds "
                        f"key of the Variable {settings.VAR_NIGHTLY_DEFAULTS}, else "
                        f"{settings.DEFAULT_SETTLE_SECONDS}.",
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
        from kmeans_ops.errors import shown
        from kmeans_ops.params import INIT_METHODS, PALETTE_MODES, ParamError
        from kmeans_ops.paths import AllowedRoots, check_scheme

        log = logging.getLogger(__name__)
        params = context["params"]
        with failing_on(settings.SettingError, L.LedgerError, ParamError):
            roots, roots_from = list(params.get("landing_roots") or []), "the run's param landing_roots"
            if roots:
                log.info("landing roots from the run's params: %s", roots)
            else:
                roots = settings.json_variable(settings.VAR_LANDING_ROOTS, list, '["/data/landing"]') or []
                roots_from = f"Variable {settings.VAR_LANDING_ROOTS}"
            if not all(isinstance(r, str) and r.strip() for r in roots):
                raise AirflowFailException(f"landing roots ({roots_from}): every entry must be a non-empty string")
            if not roots:
                log.info("no landing roots configured (Variable %s): nothing to do", settings.VAR_LANDING_ROOTS)
                return []
            defaults = settings.json_variable(settings.VAR_NIGHTLY_DEFAULTS, dict,
                                              '{"k": 16, "engine": "local", "settle_seconds": 300}') or {}
            check_defaults(defaults)
            settle, settle_from = settle_seconds(params.get("settle_seconds"), defaults)
            log.info("settle_seconds %d (from %s)", settle, settle_from)
            allowed = AllowedRoots.from_settings()
            for root in roots:  # nothing is listed unless every root is allowed
                allowed.check(f"landing root ({roots_from})", root)
            for key in ("output", "init", "palette", "keep"):  # the triggered runs check them again at prepare
                if (isinstance(defaults.get(key), str) and defaults[key] not in (*INIT_METHODS, *PALETTE_MODES)
                        and not (key == "keep" and defaults[key].lstrip().startswith("#"))):
                    check_scheme(f"{key} (Variable {settings.VAR_NIGHTLY_DEFAULTS})", defaults[key], supported=(None,))
                    allowed.check(f"{key} (Variable {settings.VAR_NIGHTLY_DEFAULTS})", defaults[key])
            ledger = L.Ledger.load(settings.ledger_path())
            exclude = [defaults.get("output") or settings.output_root(), settings.work_root()]
            found = L.scan(roots, exclude=exclude, settle_seconds=settle, allowed=allowed)
            adopted = L.adopt_legacy(found, ledger)  # HDFS files of a version 1 ledger (SHA-256 keys)
            if adopted and not params.get("dry_run"):
                ledger.save()
                log.info("ledger %s: %d HDFS file(s) of its version 1 entries now recorded by checksum",
                         shown(ledger.path), adopted)
        new = L.new_files(found, ledger)
        log.info("%d settled image(s) under %s, %d new (ledger %s: %d known)", len(found),
                 ", ".join(shown(root) for root in roots), len(new), shown(ledger.path), len(ledger))

        plans = []
        for group in L.group_by_folder(new, settings.MAX_FILES_PER_RUN):
            files = [{k: f[k] for k in ("path", "digest", "size")} for f in group["files"]]
            plans.append({
                "trigger_run_id": trigger_run_id(context["run_id"], group["folder"], [f["digest"] for f in files]),
                "conf": {**target_conf(defaults), "input": [f["path"] for f in files]},
                "files": files,
            })
        if len(plans) > settings.MAX_RUNS_PER_NIGHT:
            log.warning("%d runs planned, triggering the first %d; the rest is found again next night",
                        len(plans), settings.MAX_RUNS_PER_NIGHT)
            plans = plans[:settings.MAX_RUNS_PER_NIGHT]
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
        with failing_on(L.LedgerError):
            ledger = L.Ledger.load(settings.ledger_path())
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
