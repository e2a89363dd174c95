"""Pipefy operators and sensors against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
from airflow.exceptions import TaskDeferred

from airflow_provider_crm.common.errors import (
    CrmInputError,
    CrmNotFoundError,
    CrmPermissionError,
    CrmValidationError,
)
from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.operators.pipefy import (
    PipefyCreateCardOperator,
    PipefyExportCardsOperator,
    PipefyMoveCardOperator,
    PipefyUpsertCardsOperator,
)
from airflow_provider_crm.sensors.pipefy import PipefyCardFailedError, PipefyCardPhaseSensor
from airflow_provider_crm.triggers.pipefy import PipefyCardPhaseTrigger

pytestmark = pytest.mark.integration


def state(sandbox):
    return requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()


def test_create_card_then_retry_creates_no_duplicate(connections, context, sandbox):
    op = PipefyCreateCardOperator(task_id="c", pipe_id="301", key_field="Pipedrive deal id",
                                  fields={"Customer name": "Acme", "Pipedrive deal id": "D-1",
                                          "Start date": datetime(2026, 3, 1).date(), "Deal value": 99.5})
    ctx = context()
    first = op.execute(ctx)
    second = PipefyCreateCardOperator(task_id="c", pipe_id="301", key_field="Pipedrive deal id",
                                      fields={"Customer name": "Acme", "Pipedrive deal id": "D-1"}).execute(context())
    assert first["created"] and not second["created"] and first["id"] == second["id"]
    assert ctx["ti"].xcom["pipefy_card_url"].endswith(f"/open-cards/{first['id']}")
    card = next(c for c in state(sandbox)["cards"] if c["id"] == first["id"])
    values = {f["field"]["id"]: f for f in card["fields"]}
    assert values["start_date"]["date_value"] == "2026-03-01" and values["start_date"]["value"] == "01/03/2026"
    assert values["deal_value"]["float_value"] == 99.5


def test_create_whose_answer_is_lost_is_not_duplicated(connections, sandbox):
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"service": "pipefy", "mode": "lost", "count": 1,
                                                          "path_contains": "graphql", "method": "POST"},
                  timeout=10).raise_for_status()
    # the first POST is the pipe metadata read (retried as a read); make the create itself lose its answer
    hook = PipefyHook()
    hook.get_pipe("301")
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"service": "pipefy", "mode": "lost", "count": 1},
                  timeout=10).raise_for_status()
    card = hook.create_card("301", fields={"Customer name": "Lost", "Pipedrive deal id": "LOST-1"},
                            key_field="Pipedrive deal id")
    matches = [c for c in state(sandbox)["cards"]
               if any(f["field"]["id"] == "pipedrive_deal_id" and f["value"] == "LOST-1" for f in c["fields"])]
    assert [c["id"] for c in matches] == [card["id"]]


def test_upsert_creates_updates_rejects_and_moves(connections, context, sandbox, tmp_path):
    rows = [
        {"deal": "U-1", "Customer name": "One", "Plan": "Pro"},
        {"deal": "U-2", "Customer name": "Two", "Seats": "12"},
        {"deal": "U-3", "Customer name": "Three", "Plan": "Platinum"},  # not an option
        {"deal": "U-4", "Customer name": "Four", "Colour": "red"},  # no such field
    ]
    rejects = tmp_path / "rejects.jsonl"
    op = PipefyUpsertCardsOperator(task_id="u", pipe_id="301", rows=rows, key_field="Pipedrive deal id",
                                   field_map={"deal": "Pipedrive deal id"}, phase="Doing",
                                   rejects_path=str(rejects), max_failure_ratio=0.5)
    summary = op.execute(context())
    assert (summary["created"], summary["failed"]) == (2, 2)
    # rows are written concurrently: the rejects file is in completion order, each entry names its row
    errors = {e["row"]: e for e in map(json.loads, rejects.read_text().splitlines())}
    assert set(errors) == {3, 4}
    assert "Platinum" in errors[3]["error"] and "Colour" in errors[4]["error"]
    rows[0]["Plan"] = "Enterprise"
    again = PipefyUpsertCardsOperator(task_id="u", pipe_id="301", rows=rows[:2], key_field="Pipedrive deal id",
                                      field_map={"deal": "Pipedrive deal id"}, phase="Doing").execute(context())
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 1, 1)
    cards = [c for c in state(sandbox)["cards"] if c["current_phase"]["name"] == "Doing"
             and any(f["field"]["id"] == "pipedrive_deal_id" for f in c["fields"])]
    assert len(cards) == 2


def test_upsert_fails_past_the_threshold(connections, context):
    op = PipefyUpsertCardsOperator(task_id="u", pipe_id="301", rows=[{"Pipedrive deal id": "X", "Seats": "many"}],
                                   key_field="Pipedrive deal id")
    with pytest.raises(CrmInputError, match="1 of 1 rows failed.*'many' is not a number"):
        op.execute(context())


def test_export_is_incremental_and_keeps_machine_values(connections, context, sandbox, tmp_path):
    hook = PipefyHook()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    cards = list(hook.iter_pipe_cards("301"))
    hook.update_card(cards[0]["id"], pipe_id="301", fields={"Checklist": ["Contract", "Training"]})
    path = tmp_path / "cards.jsonl"
    summary = PipefyExportCardsOperator(task_id="e", pipe_id="301", path=str(path)).execute(
        context(now - timedelta(minutes=5), now + timedelta(minutes=5)))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert summary["records"] == 1 and rows[0]["id"] == cards[0]["id"]
    assert rows[0]["Checklist"] == ["Contract", "Training"] and rows[0]["checklist__display"].startswith("[")
    full = PipefyExportCardsOperator(task_id="e", pipe_id="301", path=str(path), fmt="jsonl",
                                     phases=["Backlog", "Doing", "Review"], full=True).execute(context())
    # a full export ends settle_seconds (10) before now: the card just updated is left for the next run
    assert full["records"] == 89 and cards[0]["id"] not in {json.loads(line)["id"] for line in path.open()}
    time.sleep(1.1)  # past the card's update second, which the range's exclusive end would leave out
    nxt = PipefyExportCardsOperator(task_id="e", pipe_id="301", path=str(path), fmt="jsonl", settle_seconds=0,
                                    phases=["Backlog", "Doing", "Review"]).execute(context())
    assert nxt["records"] == 1 and nxt["range"]["start"] == full["range"]["end"]
    assert [json.loads(line)["id"] for line in path.open()] == [cards[0]["id"]]


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (lambda h: h.get_pipe("999"), CrmNotFoundError, "Pipe not found with id: 999"),
        (lambda h: h.resolve_phase("301", "Shipping"), CrmInputError, "unknown phase 'Shipping'"),
        (lambda h: h.create_card("301", fields={"Customer name": "A", "Colour": "red"}), CrmInputError,
         "unknown field 'Colour'"),
        (lambda h: h.create_card("301", fields={"Customer name": "A", "Kickoff at": "soon"}), CrmInputError,
         "'Kickoff at'.*'soon' is not a date-time"),
        (lambda h: h.create_card("301", fields={"Email": "a@b.c"}), CrmValidationError,
         'Field "Customer name" is required'),
        (lambda h: h.get_pipe("303"), CrmPermissionError, "service account must be added"),
    ],
)
def test_bad_input_names_what_is_wrong(connections, monkeypatch, sandbox, action, error, match):
    if error is CrmPermissionError:  # a service account is not a member of the private pipe
        monkeypatch.setenv("AIRFLOW_CONN_PIPEFY_DEFAULT", json.dumps({
            "conn_type": "pipefy", "host": sandbox.info()["pipefy_url"],
            "extra": {"client_id": "sandbox-pipefy-client", "client_secret": "sandbox-pipefy-secret",
                      "oauth_token_url": sandbox.info()["pipefy_oauth_token_url"], "rate_limit_store": "memory"}}))
    with pytest.raises(error, match=match):
        action(PipefyHook())


def test_forbidden_move_names_card_and_phase(connections, context):
    card_id = next(PipefyHook().iter_phase_cards("3011"))["id"]
    with pytest.raises(CrmValidationError, match=f"card {card_id} cannot move to phase 3014.*not allowed"):
        PipefyMoveCardOperator(task_id="m", card_id=card_id, phase="Done").execute(context())


def test_card_phase_sensor_poke_and_failure_phase(connections, context):
    hook = PipefyHook()
    card_id = next(hook.iter_phase_cards("3011"))["id"]
    sensor = PipefyCardPhaseSensor(task_id="s", card_id=card_id, target_phases=["Doing"],
                                   failure_phases=["Cancelled"], deferrable=False)
    assert not sensor.poke(context()).is_done
    hook.move_card(card_id, "3012")
    result = sensor.poke(context())
    assert result.is_done and result.xcom_value["phase"] == "Doing"
    other = next(hook.iter_phase_cards("3011"))["id"]
    hook.move_card(other, "3015")
    with pytest.raises(PipefyCardFailedError, match="Cancelled"):
        PipefyCardPhaseSensor(task_id="s", card_id=other, target_phases=["Done"], failure_phases=["Cancelled"],
                              deferrable=False).poke(context())


def test_deferred_card_sensor_polls_again_only_a_round_later(connections, context):
    """The sensor has just read the card when it defers: its trigger's first poll waits one poke
    interval (an immediate one repeats the read, and a wait over within a second of deferring can
    race Airflow's scheduler into failing the resumed task)."""
    card_id = next(PipefyHook().iter_phase_cards("3011"))["id"]
    sensor = PipefyCardPhaseSensor(task_id="s", card_id=card_id, target_phases=["Doing"], deferrable=True,
                                   poke_interval=7)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context())
    _, kwargs = deferred.value.trigger.serialize()
    assert kwargs["first_poll_after"] == kwargs["poll_interval"] == 7.0


async def test_trigger_fires_on_target_phase_without_blocking_the_loop(connections):
    hook = PipefyHook()
    card_id = next(hook.iter_phase_cards("3011"))["id"]
    trigger = PipefyCardPhaseTrigger(card_id, ["3012"], ["3015"], poll_interval=0.2, timeout=20)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_crm.triggers.pipefy.PipefyCardPhaseTrigger"
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def move_later():
        await asyncio.sleep(0.6)
        await asyncio.to_thread(hook.move_card, card_id, "3012")

    tick_task = asyncio.create_task(ticker())
    mover = asyncio.create_task(move_later())
    event = await asyncio.wait_for(anext(PipefyCardPhaseTrigger(**kwargs).run()), 20)
    tick_task.cancel()
    await mover
    assert event.payload["status"] == "success" and event.payload["phase"] == "Doing"
    assert ticks >= 40  # the loop kept ticking while the trigger polled


def test_table_record_operators(connections, context, sandbox):
    from airflow_provider_crm.operators.pipefy import (
        PipefyCreateTableRecordOperator,
        PipefyUpdateTableRecordOperator,
    )

    created = PipefyCreateTableRecordOperator(task_id="c", table_id="401",
                                              fields={"Company": "Op Ltd", "Tier": "Gold"}).execute(context())
    PipefyUpdateTableRecordOperator(task_id="u", table_id="401", record_id=created["id"],
                                    fields={"Tier": "Silver"}).execute(context())
    record = next(r for r in state(sandbox)["records"] if r["id"] == created["id"])
    assert {f["field"]["id"]: f["value"] for f in record["record_fields"]}["tier"] == "Silver"
    with pytest.raises(CrmInputError, match="unknown field 'Colour'"):
        PipefyUpdateTableRecordOperator(task_id="u", table_id="401", record_id=created["id"],
                                        fields={"Colour": "red"}).execute(context())


def test_export_table_records(connections, context, tmp_path):
    from airflow_provider_crm.operators.pipefy import PipefyExportTableRecordsOperator

    path = tmp_path / "records.csv"
    summary = PipefyExportTableRecordsOperator(task_id="e", table_id="401", path=str(path), fmt="csv").execute(
        context())
    lines = path.read_text().splitlines()
    assert summary["records"] == 60 and len(lines) == 61 and "Company" in lines[0]


def test_phase_sensor_counts_cards_that_entered_since_the_interval(connections, context):
    from airflow_provider_crm.sensors.pipefy import PipefyPhaseSensor

    hook = PipefyHook()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    sensor = PipefyPhaseSensor(task_id="p", pipe_id="301", phase="Doing", min_cards=2, since_interval_start=True,
                               deferrable=False)
    ctx = context(now - timedelta(seconds=5), now + timedelta(hours=1))
    before = sensor.poke(ctx)
    assert not before.is_done  # 30 seeded cards entered long ago
    moved = [c["id"] for c in list(hook.iter_phase_cards("3011"))[:2]]
    for card_id in moved:
        hook.move_card(card_id, "3012")
    after = sensor.poke(ctx)
    assert after.is_done and sorted(after.xcom_value) == sorted(moved)
