"""One task of each service against the sandbox, for the compatibility run (scripts/compat.py)."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator
from airflow_provider_crm.operators.pipefy import PipefyCreateCardOperator

OUTPUT = os.environ.get("CRM_COMPAT_OUTPUT", "/tmp/airflow-provider-crm-compat")
MARK = os.environ.get("CRM_COMPAT_MARK", "compat")

with DAG(
    dag_id="crm_compat_check",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["crm", "compat"],
):
    PipedriveExportOperator(task_id="export_organizations", entity="organizations", full=True,
                            path=OUTPUT + "/pipedrive/organizations.jsonl")
    PipefyCreateCardOperator(task_id="create_card", pipe_id="301", title=f"Compat check {MARK}",
                             fields={"Customer name": f"Compat check {MARK}", "Pipedrive deal id": MARK},
                             key_field="Pipedrive deal id")
