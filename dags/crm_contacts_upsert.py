"""A CSV of contacts upserted into Pipedrive persons, keyed by email.

Custom fields are columns named like the field ("Source", "Customer id"), option values by label.
Rows that fail (an unknown option, a value of the wrong type, a missing name) go to a rejects file
with the reason; the task fails only when more than 50 % of the rows fail. Running it again
updates or leaves alone what the first run created: nothing is created twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_crm.operators.pipedrive import PipedriveUpsertOperator

OUTPUT = os.environ.get("CRM_DEMO_OUTPUT", "/tmp/airflow-provider-crm")
CONTACTS = str(Path(__file__).parent / "data" / "contacts.csv")

with DAG(
    dag_id="crm_contacts_upsert",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["crm", "pipedrive"],
    doc_md=__doc__,
) as dag:
    PipedriveUpsertOperator(
        task_id="upsert_persons",
        entity="persons",
        rows=CONTACTS,
        key_field="email",
        rejects_path=OUTPUT + "/rejects/contacts-{{ dag_run.run_after | ds }}.jsonl",
        max_failure_ratio=0.5,
    )
