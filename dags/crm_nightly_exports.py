"""Nightly incremental exports of a Pipefy pipe and of Pipedrive deals, persons and organizations.

Each run exports the records updated in its data interval [start, end), so consecutive runs neither
miss nor repeat a record. Files are JSON Lines, written atomically, and published as Assets whose
events carry the record counts. Deleted deals come out as tombstones (``"_deleted": true``).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset

from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator
from airflow_provider_crm.operators.pipefy import PipefyExportCardsOperator

OUTPUT = os.environ.get("CRM_DEMO_OUTPUT", "/tmp/airflow-provider-crm")

with DAG(
    dag_id="crm_nightly_exports",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["crm", "export"],
    doc_md=__doc__,
) as dag:
    PipefyExportCardsOperator(
        task_id="export_onboarding_pipe",
        pipe_id="301",
        path=OUTPUT + "/pipefy/onboarding/{{ dag_run.run_after | ds }}.jsonl",
        outlets=[Asset("crm://pipefy/pipes/301")],
    )
    for entity in ("deals", "persons", "organizations"):
        PipedriveExportOperator(
            task_id=f"export_{entity}",
            entity=entity,
            path=OUTPUT + f"/pipedrive/{entity}/{{{{ dag_run.run_after | ds }}}}.jsonl",
            include_deleted=entity == "deals",
            slices=2,
            outlets=[Asset(f"crm://pipedrive/{entity}")],
        )
