"""The Celery e2e's DAG (tests/e2e/test_celery.py; not an example DAG).

Ten tasks start at once and share one Pipedrive token (Lite plan: 20 requests per 2 s, searches 10
per 2 s) and one Pipefy token (a window lowered in the sandbox and on the connection), across two
Celery workers and the triggerer: more work than either token's window allows, so the tasks only
stay under the limits if every process takes its slots from one store (``[crm] rate_limit_store``,
set once in the Airflow configuration; the connections name no store).

- Pipedrive: three exports (deals in two slices, persons, activities) and two upserts of
  organizations keyed by name (one search per row, then a create or an update), on disjoint rows;
- Pipefy: an export of pipe 301's cards, an export of table 401's records, two upserts of tickets
  into pipe 302 keyed by their requester (``lookup="search"``: a findCards and a create per row), on
  disjoint rows;
- a deferrable sensor waiting for a card of pipe 301 to reach "Doing": the triggerer polls for it
  (the test moves the card once the task has deferred) and a worker resumes the task.

Inputs (the upserts' rows) and outputs live under ``CRM_CELERY_INPUT`` and ``CRM_CELERY_OUTPUT``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator, PipedriveUpsertOperator
from airflow_provider_crm.operators.pipefy import (
    PipefyExportCardsOperator,
    PipefyExportTableRecordsOperator,
    PipefyUpsertCardsOperator,
)
from airflow_provider_crm.sensors.pipefy import PipefyCardPhaseSensor

INPUT = os.environ.get("CRM_CELERY_INPUT", "/tmp/crm-celery/input")
OUTPUT = os.environ.get("CRM_CELERY_OUTPUT", "/tmp/crm-celery/output")

with DAG(
    dag_id="crm_celery_scale_out",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    is_paused_upon_creation=False,
    max_active_tasks=16,
    # a failure is a finding here, not something to retry past
    default_args={"retries": 0},
    tags=["crm", "e2e"],
    doc_md=__doc__,
):
    PipedriveExportOperator(task_id="pd_export_deals", entity="deals", full=True, slices=2,
                            path=OUTPUT + "/pipedrive/deals.jsonl")
    PipedriveExportOperator(task_id="pd_export_persons", entity="persons", full=True,
                            path=OUTPUT + "/pipedrive/persons.jsonl")
    PipedriveExportOperator(task_id="pd_export_activities", entity="activities", full=True,
                            path=OUTPUT + "/pipedrive/activities.jsonl")
    for part in ("a", "b"):
        PipedriveUpsertOperator(task_id=f"pd_upsert_orgs_{part}", entity="organizations", key_field="name",
                                lookup="search", rows=f"{INPUT}/organizations_{part}.jsonl",
                                rejects_path=f"{OUTPUT}/pipedrive/organizations_{part}.rejects.jsonl")
    PipefyExportCardsOperator(task_id="pf_export_cards", pipe_id="301", full=True,
                              path=OUTPUT + "/pipefy/cards_301.jsonl")
    PipefyExportTableRecordsOperator(task_id="pf_export_records", table_id="401", full=True,
                                     path=OUTPUT + "/pipefy/records_401.jsonl")
    for part in ("a", "b"):
        # lookup="search": a findCards per row, so the DAG's Pipefy work needs more than one window
        # (the default would read the small pipe once and stay within it)
        PipefyUpsertCardsOperator(task_id=f"pf_upsert_tickets_{part}", pipe_id="302", key_field="Requester",
                                  lookup="search", title_column="title", rows=f"{INPUT}/tickets_{part}.jsonl",
                                  rejects_path=f"{OUTPUT}/pipefy/tickets_{part}.rejects.jsonl")
    PipefyCardPhaseSensor(task_id="pf_wait_for_doing", card_id="{{ dag_run.conf['card_id'] }}",
                          target_phases=["Doing"], deferrable=True, poke_interval=5, timeout=600)
