"""Won deals become onboarding cards, and the deal is marked once onboarding is done.

1. Read the Pipedrive deals won (updated) in the last ``lookback_hours`` hours; a run without a
   logical date (``airflow dags trigger``, the REST API) looks back from now.
2. Upsert one onboarding card per deal in a Pipefy pipe, keyed by the deal id (a retry creates no
   duplicate card).
3. Wait, deferred to the triggerer, until each card reaches the pipe's "Done" phase; a card moved to
   "Cancelled" fails its wait at once.
4. Add a note to each deal in Pipedrive.

Connections are referred to by id only: ``pipedrive_default`` and ``pipefy_default``.
The ``simulate_onboarding_team`` param moves the cards along the pipe, for the sandbox demo only.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_crm.hooks.pipedrive import PipedriveHook
from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.operators.pipefy import PipefyUpsertCardsOperator
from airflow_provider_crm.sensors.pipefy import PipefyCardPhaseSensor

ONBOARDING_PIPE_ID = "301"
OUTPUT = os.environ.get("CRM_DEMO_OUTPUT", "/tmp/airflow-provider-crm")

with DAG(
    dag_id="crm_won_deals_onboarding",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"simulate_onboarding_team": Param(False, type="boolean"), "max_deals": Param(5, type="integer"),
            # a day and an hour: a run that starts late still overlaps the previous one; the upsert is
            # keyed by the deal id, so a deal seen by two runs still has one card
            "lookback_hours": Param(25, type="integer", minimum=1)},
    tags=["crm", "pipedrive", "pipefy"],
    doc_md=__doc__,
) as dag:

    @task
    def won_deals(params=None) -> list[dict]:
        """Deals won in the last ``lookback_hours``, as rows for the Pipefy upsert.

        Not the data interval: Airflow 3's cron runs have an empty one, and a run triggered without a
        logical date has none at all.
        """
        end = pendulum.now("UTC").add(seconds=1)
        start = end.subtract(hours=params["lookback_hours"])
        hook = PipedriveHook()
        fields = hook.field_map("deals")
        rows = []
        for deal in hook.iter_records("deals", status="won", updated_since=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                      updated_until=end.strftime("%Y-%m-%dT%H:%M:%SZ")):
            deal = fields.rename_record(deal)
            rows.append({
                "Pipedrive deal id": str(deal["id"]),
                "Customer name": deal["title"],
                "Deal value": deal.get("value"),
                "Plan": deal.get("Onboarding plan") or "Basic",
            })
            if len(rows) >= params["max_deals"]:
                break
        return rows

    upsert_cards = PipefyUpsertCardsOperator(
        task_id="upsert_onboarding_cards",
        pipe_id=ONBOARDING_PIPE_ID,
        rows=won_deals(),
        key_field="Pipedrive deal id",
        rejects_path=OUTPUT + "/rejects/onboarding-{{ dag_run.run_after | ds }}.jsonl",
    )

    @task
    def card_ids(summary: dict) -> list[str]:
        return summary["ids"]

    @task
    def simulate_onboarding_team(ids: list[str], params=None) -> None:
        """Sandbox demo only: what the onboarding team does in Pipefy's UI."""
        if not params["simulate_onboarding_team"]:
            return
        hook = PipefyHook()
        for card_id in ids:
            phase = hook.get_card(card_id)["current_phase"]["name"]
            path = ["Backlog", "Doing", "Review", "Done"]
            for nxt in path[path.index(phase) + 1:] if phase in path else []:
                if nxt == "Done":
                    hook.update_card(card_id, pipe_id=ONBOARDING_PIPE_ID, fields={"Review notes": "All set"})
                hook.move_card(card_id, hook.resolve_phase(ONBOARDING_PIPE_ID, nxt)["id"])

    ids = card_ids(upsert_cards.output)
    wait_done = PipefyCardPhaseSensor.partial(
        task_id="wait_until_onboarded",
        target_phases=["Done"],
        failure_phases=["Cancelled"],
        deferrable=True,
        poke_interval=5,
        timeout=timedelta(days=14),
    ).expand(card_id=ids)
    simulate_onboarding_team(ids) >> wait_done

    @task
    def mark_deals(results: list[dict]) -> int:
        hook = PipedriveHook()
        for result in results:
            deal_id = int(result["fields"]["Pipedrive deal id"])
            hook.create("notes", {"content": f"Onboarding finished (Pipefy card {result['card_id']})",
                                  "deal_id": deal_id})
        return len(results)

    mark_deals(wait_done.output)
