"""Nightly incremental exports of a Pipefy pipe and of Pipedrive deals, persons and organizations.

Each export continues from where its last successful run ended (a watermark kept in an Airflow
Variable), so consecutive runs neither miss nor repeat a record, however the run was started:
scheduled (Airflow 3's cron runs have an empty data interval), triggered with or without a logical
date, or re-run after a failure. The first run exports everything. Each run writes its own JSON Lines
files, atomically, and publishes Assets whose events carry the counts and the time range. Deleted
deals come out as tombstones (``"_deleted": true``). See docs/incremental-exports.md.
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
    max_active_runs=1,  # two runs at once would read the same range from the same watermark
    tags=["crm", "export"],
    doc_md=__doc__,
) as dag:
    PipefyExportCardsOperator(
        task_id="export_onboarding_pipe",
        pipe_id="301",
        path=OUTPUT + "/pipefy/onboarding/{{ dag_run.run_after | ts_nodash }}.jsonl",
        outlets=[Asset("crm://pipefy/pipes/301")],
    )
    for entity in ("deals", "persons", "organizations"):
        PipedriveExportOperator(
            task_id=f"export_{entity}",
            entity=entity,
            path=OUTPUT + f"/pipedrive/{entity}/{{{{ dag_run.run_after | ts_nodash }}}}.jsonl",
            include_deleted=entity == "deals",
            slices=2,
            outlets=[Asset(f"crm://pipedrive/{entity}")],
        )
