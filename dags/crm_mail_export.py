"""The mail threads of a Pipedrive folder, each with its messages, exported for analysis as JSON Lines."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset

from airflow_provider_crm.operators.pipedrive import PipedriveMailExportOperator

OUTPUT = os.environ.get("CRM_DEMO_OUTPUT", "/tmp/airflow-provider-crm")

with DAG(
    dag_id="crm_mail_export",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["crm", "pipedrive", "mail"],
    doc_md=__doc__,
) as dag:
    for folder in ("inbox", "sent"):
        PipedriveMailExportOperator(
            task_id=f"export_{folder}",
            folder=folder,
            path=OUTPUT + f"/pipedrive/mail/{folder}-{{{{ dag_run.run_after | ds }}}}.jsonl",
            outlets=[Asset(f"crm://pipedrive/mail/{folder}")],
        )
