"""More Pipefy behaviour against the sandbox over real HTTP: links, deletes, table-record keys, quota
refusals, asset events, required fields on a move, phase and deletion triggers."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import datetime, timedelta, timezone

import pytest
import requests
from airflow.sdk import Asset, ObjectStoragePath
from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_provider_crm.common.errors import (
    CrmInputError,
    CrmNotFoundError,
    CrmPermissionError,
    CrmQuotaExceededError,
    CrmValidationError,
)
from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.operators.pipefy import (
    PipefyCreateTableRecordOperator,
    PipefyDeleteCardOperator,
    PipefyExportCardsOperator,
    PipefyExportTableRecordsOperator,
    PipefyMoveCardOperator,
    PipefyUpdateCardOperator,
    PipefyUpsertCardsOperator,
)
from airflow_provider_crm.triggers.pipefy import PipefyCardPhaseTrigger, PipefyPhaseTrigger

pytestmark = pytest.mark.integration


def state(sandbox):
    return requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()


def set_conn(monkeypatch, sandbox, **extra):
    monkeypatch.setenv("AIRFLOW_CONN_PIPEFY_DEFAULT", json.dumps({
        "conn_type": "pipefy", "host": sandbox.info()["pipefy_url"], "password": "sandbox-pipefy-token",
        "extra": {"rate_limit_store": "memory", **extra}}))


def test_links_point_at_the_connections_web_app(connections, context, sandbox, monkeypatch):
    card_id = next(PipefyHook().iter_phase_cards("3011"))["id"]
    ctx = context()
    summary = PipefyUpdateCardOperator(task_id="u", card_id=card_id, fields={"Notes": "hello"}).execute(ctx)
    base = sandbox.info()["pipefy_url"].removesuffix("/graphql")
    assert summary["url"] == f"{base}/open-cards/{card_id}" == ctx["ti"].xcom["pipefy_card_url"]
    set_conn(monkeypatch, sandbox, web_url="https://acme.pipefy.example")
    ctx = context()
    PipefyUpdateCardOperator(task_id="u", card_id=card_id, fields={"Notes": "again"}).execute(ctx)
    assert ctx["ti"].xcom["pipefy_card_url"] == f"https://acme.pipefy.example/open-cards/{card_id}"


def test_delete_card_then_again_is_done_unless_it_must_exist(connections, context, sandbox):
    card_id = next(PipefyHook().iter_phase_cards("3011"))["id"]
    ctx = context()
    first = PipefyDeleteCardOperator(task_id="d", card_id=card_id).execute(ctx)
    assert first["deleted"] is True and first["pipe_id"] == "301"
    assert ctx["ti"].xcom["pipefy_pipe_url"].endswith("/pipes/301")
    assert card_id not in {c["id"] for c in state(sandbox)["cards"]}
    again = PipefyDeleteCardOperator(task_id="d", card_id=card_id).execute(context())
    assert again["deleted"] is False
    with pytest.raises((CrmNotFoundError, CrmPermissionError), match=card_id):
        PipefyDeleteCardOperator(task_id="d", card_id=card_id, must_exist=True).execute(context())


def test_table_record_create_with_key_is_not_duplicated(connections, context, sandbox):
    def run():
        return PipefyCreateTableRecordOperator(task_id="r", table_id="401", key_field="Company",
                                               fields={"Company": "Keyed Ltd", "Tier": "Gold"}).execute(context())

    first, second = run(), run()
    assert first["created"] and not second["created"] and first["id"] == second["id"]
    keyed = [r for r in state(sandbox)["records"]
             if any(f["field"]["id"] == "company" and f["value"] == "Keyed Ltd" for f in r["record_fields"])]
    assert len(keyed) == 1
    with pytest.raises(CrmInputError, match="key field 'Company' has no value"):
        PipefyCreateTableRecordOperator(task_id="r", table_id="401", key_field="Company",
                                        fields={"Tier": "Gold"}).execute(context())


def test_move_out_of_a_phase_with_a_required_field_empty_names_the_field(connections, context):
    hook = PipefyHook()
    card = hook.create_card("301", title="Needs review", fields={"Customer name": "Reviewed Co"})
    PipefyMoveCardOperator(task_id="m", card_id=card["id"], phase="Doing").execute(context())
    PipefyMoveCardOperator(task_id="m", card_id=card["id"], phase="Review").execute(context())
    with pytest.raises(CrmValidationError, match=rf"card {card['id']} cannot move to phase 3014.*Review notes"):
        PipefyMoveCardOperator(task_id="m", card_id=card["id"], phase="Done").execute(context())
    hook.update_card(card["id"], pipe_id="301", fields={"Review notes": "ok"})
    done = PipefyMoveCardOperator(task_id="m", card_id=card["id"], phase="Done").execute(context())
    assert done["moved"] and done["phase"] == "Done"


def test_update_with_a_value_of_the_wrong_type_names_field_and_value(connections):
    card_id = next(PipefyHook().iter_phase_cards("3011"))["id"]
    with pytest.raises(CrmInputError, match=r"'Seats' \(number\).*'twelve' is not a number"):
        PipefyUpdateCardOperator(task_id="u", card_id=card_id, fields={"Seats": "twelve"}).execute({})
    with pytest.raises(CrmInputError, match=r"'Plan'.*'Gold' is not one of its options"):
        PipefyUpdateCardOperator(task_id="u", card_id=card_id, fields={"Plan": "Gold"}).execute({})


def test_upsert_from_a_csv_file_skips_unchanged_rows_on_a_rerun(connections, context, sandbox, tmp_path):
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["deal", "Customer name", "Seats", "Start date", "Kickoff at"])
        writer.writeheader()
        for n in range(1, 6):
            writer.writerow({"deal": f"CSV-{n}", "Customer name": f"Csv {n}", "Seats": str(n * 10),
                             "Start date": "2026-03-0" + str(n), "Kickoff at": f"2026-03-0{n}T09:30:00Z"})

    def run():
        return PipefyUpsertCardsOperator(task_id="u", pipe_id="301", rows=ObjectStoragePath(f"file://{path}"),
                                         key_field="Pipedrive deal id", field_map={"deal": "Pipedrive deal id"},
                                         title_column="Customer name").execute(context())

    first = run()
    assert (first["created"], first["failed"]) == (5, 0)
    second = run()  # an Airflow retry / a rerun: nothing created twice, nothing rewritten
    assert (second["created"], second["updated"], second["unchanged"]) == (0, 0, 5)
    keyed = [c for c in state(sandbox)["cards"]
             if any(f["field"]["id"] == "pipedrive_deal_id" and f["value"].startswith("CSV-") for f in c["fields"])]
    assert len(keyed) == 5 and {c["title"] for c in keyed} == {f"Csv {n}" for n in range(1, 6)}


def test_runs_the_monthly_quota_cannot_finish_are_refused_before_any_call(monkeypatch, connections, context, sandbox,
                                                                          tmp_path):
    set_conn(monkeypatch, sandbox, monthly_quota=3)  # the pipe read leaves 2; three phases of 30 need 3 pages
    path = tmp_path / "cards.jsonl"
    with pytest.raises(CrmQuotaExceededError, match="needs about 3 calls but only .* left.*not starting"):
        PipefyExportCardsOperator(task_id="e", pipe_id="301", path=str(path), full=True,
                                  phases=["Backlog", "Doing", "Review"]).execute(context())
    assert not path.exists()
    before = [c["id"] for c in state(sandbox)["cards"]]
    rows = [{"Pipedrive deal id": f"Q-{n}", "Customer name": "Q"} for n in range(5)]
    # 3 pages of the pipe's 150 cards (fewer than 5 finds) and 5 creates
    with pytest.raises(CrmQuotaExceededError, match="needs about 8 calls"):
        PipefyUpsertCardsOperator(task_id="u", pipe_id="301", rows=rows, key_field="Pipedrive deal id").execute(
            context())
    assert [c["id"] for c in state(sandbox)["cards"]] == before


def test_export_csv_by_phase_emits_the_asset_event_with_the_count(connections, context, tmp_path):
    asset = Asset("crm://pipefy/pipes/301")
    ctx = context()
    ctx["outlet_events"] = OutletEventAccessors()
    path = tmp_path / "cards.csv"
    op = PipefyExportCardsOperator(task_id="e", pipe_id="301", path=str(path), fmt="csv", full=True,
                                   phases=["3011", "Doing"], max_workers=2, outlets=[asset])
    summary = op.execute(ctx)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    phases = {r["phase"] for r in rows}
    assert summary["records"] == len(rows) == 60 and phases == {"Backlog", "Doing"}
    assert len({r["id"] for r in rows}) == 60
    extra = ctx["outlet_events"][asset].extra
    assert extra["records"] == 60 and extra["path"] == str(path)
    assert extra["range"] == {"case": "full", "start": None, "end": summary["range"]["end"]}
    assert {"Customer name", "customer_name", "customer_name__display"} <= set(rows[0])


def test_table_export_is_incremental_by_the_data_interval(connections, context, tmp_path):
    hook = PipefyHook()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    record = hook.create_table_record("401", title="Fresh", fields={"Company": "Fresh Ltd"})
    path = tmp_path / "records.jsonl"
    summary = PipefyExportTableRecordsOperator(task_id="t", table_id="401", path=str(path)).execute(
        context(now - timedelta(minutes=5), now + timedelta(minutes=5)))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert summary["records"] == 1 and rows[0]["id"] == record["id"] and rows[0]["Company"] == "Fresh Ltd"


async def test_phase_trigger_fires_when_enough_cards_arrive(connections):
    hook = PipefyHook()
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    trigger = PipefyPhaseTrigger("3013", min_cards=2, since=since, poll_interval=0.1, timeout=20)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_crm.triggers.pipefy.PipefyPhaseTrigger"
    doing = [c["id"] for c in list(hook.iter_phase_cards("3012"))[:2]]

    async def move_later():
        await asyncio.sleep(0.3)
        for card_id in doing:
            await asyncio.to_thread(hook.move_card, card_id, "3013")

    mover = asyncio.create_task(move_later())
    event = await asyncio.wait_for(anext(PipefyPhaseTrigger(**kwargs).run()), 20)
    await mover
    assert event.payload["status"] == "success" and sorted(event.payload["card_ids"]) == sorted(doing)


async def test_card_trigger_reports_a_deleted_card(connections):
    hook = PipefyHook()
    card_id = next(hook.iter_phase_cards("3011"))["id"]
    await asyncio.to_thread(hook.delete_card, card_id)
    event = await asyncio.wait_for(anext(PipefyCardPhaseTrigger(card_id, ["3014"], poll_interval=0.1).run()), 20)
    assert event.payload["status"] == "deleted" and event.payload["card_id"] == card_id


async def test_card_trigger_times_out_with_an_event(connections):
    card_id = next(PipefyHook().iter_phase_cards("3011"))["id"]
    event = await asyncio.wait_for(
        anext(PipefyCardPhaseTrigger(card_id, ["3014"], poll_interval=0.05, timeout=0.2).run()), 20)
    assert event.payload["status"] == "timeout" and card_id in event.payload["message"]
