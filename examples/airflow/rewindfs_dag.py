"""Airflow DAGs that run rewindfs's backup schedule and snapshot a training
pipeline's outputs.

The seed's schedule, against the rewindfs mount of one dataset:

- ``rewindfs_hourly_incremental``: an incremental snapshot every hour,
- ``rewindfs_daily_full``: a full snapshot at 02:00, then a sampled
  verification of the stored data, then retention (forget with keep
  rules, then gc),
- ``rewindfs_daily_differential``: a differential snapshot at 14:00,
- ``rewindfs_training_pipeline``: a training pipeline whose tasks each
  end with a snapshot labelled with the task, so every stage's outputs
  can be browsed and restored (``MOUNT/.snapshots/...``).

Configure with Airflow Variables (or ``AIRFLOW_VAR_*`` environment
variables): ``rewindfs_mount`` (the mountpoint, required),
``rewindfs_bin`` (default ``rewindfs``), ``rewindfs_keep`` (default
``--keep-hourly 48 --keep-daily 14 --keep-weekly 8``),
``rewindfs_verify_sample`` (percent of packs, default 5).

Every task runs the rewindfs CLI on the worker, which must see the mount
(the daemon does the work; the CLI finds it from the mountpoint with -C).
A failing command fails its task, so Airflow's alerting and retries apply.
"""

from __future__ import annotations

import datetime as dt
import shlex

from airflow import DAG
from airflow.models import Variable
from airflow.operators.bash import BashOperator
from airflow.operators.python import PythonOperator

DEFAULT_ARGS = {
    "owner": "storage",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=5),
}
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _rw(args: str) -> str:
    """A rewindfs command line (templated: settings are read at run time)."""
    return (
        "set -euo pipefail; "
        '"{{ var.value.get("rewindfs_bin", "rewindfs") }}" ' + args +
        ' -C "{{ var.value.rewindfs_mount }}"'
    )


def _backup_dag(dag_id: str, description: str, schedule: str) -> DAG:
    """A scheduled backup DAG: one run at a time, no catch-up of missed runs."""
    return DAG(
        dag_id,
        description=description,
        schedule=schedule,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["rewindfs", "backup"],
    )


def _snapshot(task_id: str, kind: str) -> BashOperator:
    return BashOperator(
        task_id=task_id,
        bash_command=_rw(f"snapshot --kind {kind} --label airflow-{kind}-{{{{ ts_nodash }}}}"),
    )


with _backup_dag(
    "rewindfs_hourly_incremental",
    "rewindfs: an incremental snapshot every hour",
    "0 * * * *",
):
    _snapshot("incremental", "incremental")

with _backup_dag(
    "rewindfs_daily_full",
    "rewindfs: a full snapshot at 02:00, sampled verification, retention",
    "0 2 * * *",
):
    full = _snapshot("full", "full")
    verify = BashOperator(
        task_id="verify_sample",
        bash_command=_rw('verify --read-data --sample {{ var.value.get("rewindfs_verify_sample", "5") }}'),
    )
    retention = BashOperator(
        task_id="retention",
        bash_command=_rw(
            'forget {{ var.value.get("rewindfs_keep", "--keep-hourly 48 --keep-daily 14 --keep-weekly 8") }} --prune'
        ),
    )
    full >> verify >> retention

with _backup_dag(
    "rewindfs_daily_differential",
    "rewindfs: a differential snapshot at 14:00",
    "0 14 * * *",
):
    _snapshot("differential", "differential")


def _train(stage: str, **context) -> str:
    """Stand-in for a training stage: writes its output into the mount.
    Replace with the real work (it only has to write under the mount)."""
    import os

    mount = Variable.get("rewindfs_mount")
    out = os.path.join(mount, "pipeline", context["ds_nodash"])
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{stage}.txt")
    with open(path, "w") as f:
        f.write(f"{stage} of run {context['run_id']}\n")
    return path


def _labelled_snapshot(stage: str, **context) -> int:
    """Snapshot after a stage, labelled with it (the Python client)."""
    import rewindfs

    rec = rewindfs.snapshot(
        Variable.get("rewindfs_mount"),
        label=f"{context['dag'].dag_id}-{stage}-{context['ds_nodash']}",
    )
    return rec["id"]


with DAG(
    "rewindfs_training_pipeline",
    description="A training pipeline that snapshots its outputs after each task",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={**DEFAULT_ARGS, "retries": 0},
    tags=["rewindfs", "training"],
):
    previous = None
    for stage in ["prepare_data", "train", "evaluate"]:
        work = PythonOperator(task_id=stage, python_callable=_train, op_kwargs={"stage": stage})
        snap = PythonOperator(
            task_id=f"snapshot_after_{stage}",
            python_callable=_labelled_snapshot,
            op_kwargs={"stage": stage},
        )
        if previous is not None:
            previous >> work
        work >> snap
        previous = snap
