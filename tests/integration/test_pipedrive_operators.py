"""Pipedrive operators and the deal sensor against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import datetime, timedelta, timezone

import pytest
import requests

from airflow_provider_crm.common.errors import (
    CrmAuthError,
    CrmInputError,
    CrmNotFoundError,
    CrmPlanLimitError,
)
from airflow_provider_crm.hooks.pipedrive import PipedriveHook
from airflow_provider_crm.operators.pipedrive import (
    PipedriveCreateOperator,
    PipedriveDeleteOperator,
    PipedriveExportOperator,
    PipedriveUpdateOperator,
    PipedriveUpsertOperator,
)
from airflow_provider_crm.sensors.pipedrive import PipedriveDealSensor
from airflow_provider_crm.triggers.pipedrive import PipedriveDealTrigger

pytestmark = pytest.mark.integration
TOKEN = {"x-api-token": "sandbox-pipedrive-token"}


def sandbox_state(sandbox, entity):
    return requests.get(f"{sandbox.url}/pipedrive/_state/{entity}", timeout=10).json()


def advance(sandbox, seconds):
    requests.post(f"{sandbox.url}/_sandbox/clock", json={"advance": seconds}, timeout=10).raise_for_status()


def clock(sandbox) -> datetime:
    now = requests.get(f"{sandbox.url}/_sandbox/clock", timeout=10).json()["now"]
    return datetime.fromtimestamp(int(now), timezone.utc)


def test_create_update_delete_with_custom_fields_by_name(connections, context, sandbox):
    ctx = context()
    created = PipedriveCreateOperator(task_id="c", entity="deals", key_field="External id",
                                      data={"title": "Big one", "Onboarding plan": "Enterprise",
                                            "External id": "EXT-NEW", "Contract value": "1500"}).execute(ctx)
    again = PipedriveCreateOperator(task_id="c", entity="deals", key_field="External id",
                                    data={"title": "Big one", "External id": "EXT-NEW"}).execute(context())
    assert created["created"] and not again["created"] and again["id"] == created["id"]
    assert ctx["ti"].xcom["pipedrive_record_url"].endswith(f"/deal/{created['id']}")
    deal = next(d for d in sandbox_state(sandbox, "deals") if d["id"] == created["id"])
    fields = PipedriveHook().field_map("deals")
    named = fields.rename_record(deal)
    assert named["Onboarding plan"] == "Enterprise" and named["Contract value"] == {"value": 1500.0, "currency": "USD"}
    PipedriveUpdateOperator(task_id="u", entity="deals", record_id=created["id"], data={"status": "won"}).execute(ctx)
    PipedriveDeleteOperator(task_id="d", entity="deals", record_id=created["id"]).execute(ctx)
    with pytest.raises(CrmNotFoundError):
        PipedriveDeleteOperator(task_id="d", entity="deals", record_id=created["id"], must_exist=True).execute(ctx)


def test_consecutive_incremental_runs_lose_nothing_and_repeat_nothing(connections, context, sandbox, tmp_path):
    hook = PipedriveHook()
    t0 = clock(sandbox)
    start = t0 - timedelta(days=500)
    seen: dict[int, int] = {}
    boundaries = [start, t0 + timedelta(seconds=1)]
    # run 1 covers history; between runs records change, appear and are deleted
    for run, (a, b) in enumerate(zip(boundaries, boundaries[1:], strict=False)):
        path = tmp_path / f"run{run}.jsonl"
        PipedriveExportOperator(task_id="e", entity="deals", path=str(path), include_deleted=True,
                                slices=3).execute(context(a, b))
        for line in path.read_text().splitlines():
            record = json.loads(line)
            seen[record["id"]] = seen.get(record["id"], 0) + 1
    advance(sandbox, 5)
    hook.update("deals", 3, {"title": "Changed after run 1"})
    new = hook.create("deals", {"title": "Born after run 1"})
    hook.delete("deals", 4)
    advance(sandbox, 5)
    t1 = clock(sandbox) + timedelta(seconds=1)
    path = tmp_path / "run2.jsonl"
    summary = PipedriveExportOperator(task_id="e", entity="deals", path=str(path), include_deleted=True).execute(
        context(boundaries[-1], t1))
    second = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["id"] for r in second} == {3, new["id"], 4}
    assert next(r for r in second if r["id"] == 4)["_deleted"] is True and summary["deleted"] == 1
    # against the sandbox's full state: every live, non-archived deal was exported exactly once in run 1
    state = sandbox_state(sandbox, "deals")
    expected_first = {d["id"] for d in state if not d.get("is_archived") and d["id"] != new["id"]}
    assert set(seen) == expected_first
    assert all(count == 1 for count in seen.values())


def test_export_renames_custom_fields_and_option_labels(connections, context, tmp_path):
    path = tmp_path / "persons.csv"
    ctx = context()
    PipedriveExportOperator(task_id="e", entity="persons", path=str(path), fmt="csv", full=True).execute(ctx)
    # the task's extra link: the persons list, a page the sandbox serves
    link = ctx["ti"].xcom["pipedrive_list_url"]
    assert link.endswith("/persons/list") and requests.get(link, timeout=10).status_code == 200
    header = path.read_text().splitlines()[0]
    assert "Source" in header and "Customer id" in header
    assert not any(len(col) == 40 for col in header.split(","))


def test_csv_export_of_deals_with_tombstones_has_one_stable_header(connections, context, sandbox, tmp_path):
    """Deals differ in their keys (archived and deleted ones add some): the CSV holds every deal the
    JSON Lines export holds, under one header that starts with the declared fields."""
    common = {"entity": "deals", "include_deleted": True, "include_archived": True, "settle_seconds": 0}
    PipedriveExportOperator(task_id="c", path=str(tmp_path / "d.csv"), fmt="csv", **common).execute(context())
    PipedriveExportOperator(task_id="j", path=str(tmp_path / "d.jsonl"), **common).execute(context())
    with (tmp_path / "d.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    lines = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert reader.fieldnames is not None and reader.fieldnames[:2] == ["id", "title"]
    assert {"_deleted", "_archived", "Onboarding plan"} <= set(reader.fieldnames)
    assert sorted(int(r["id"]) for r in rows) == sorted(d["id"] for d in lines)
    assert sum(r["_deleted"] == "True" for r in rows) == sum(bool(d.get("_deleted")) for d in lines) > 0


def test_upsert_by_email_and_custom_field_no_duplicates(connections, context, sandbox, tmp_path):
    rows = [{"email": "person2@example.com", "name": "Person Two", "Source": "Event"},
            {"email": "new.one@example.com", "name": "New One", "Lifetime value": "12.5"},
            {"email": "bad@example.com", "name": "Bad", "Lifetime value": "a lot"}]
    rejects = tmp_path / "rejects.jsonl"
    op = PipedriveUpsertOperator(task_id="u", entity="persons", rows=rows, key_field="email",
                                 rejects_path=str(rejects), max_failure_ratio=0.5)
    ctx = context()
    first = op.execute(ctx)
    assert (first["created"], first["updated"], first["failed"]) == (1, 1, 1)
    link = ctx["ti"].xcom["pipedrive_list_url"]
    assert link.endswith("/persons/list") and "New One" in requests.get(link, timeout=10).text
    assert "'a lot' is not a number" in rejects.read_text()
    second = PipedriveUpsertOperator(task_id="u", entity="persons", rows=rows[:2], key_field="email").execute(
        context())
    assert (second["created"], second["unchanged"]) == (0, 2)
    by_custom = PipedriveUpsertOperator(task_id="u", entity="persons", key_field="Customer id",
                                        rows=[{"Customer id": "C-000007", "name": "Renamed Seven"}]).execute(context())
    assert by_custom["updated"] == 1
    persons = sandbox_state(sandbox, "persons")
    assert sum(1 for p in persons for e in p["emails"] if e["value"] == "new.one@example.com") == 1


@pytest.mark.parametrize("key_field", ["email", "Customer id"])
def test_indexed_upsert_matches_like_search_and_never_creates_twice(connections, context, sandbox, monkeypatch,
                                                                     key_field):
    from airflow_provider_crm.clients.pipedrive.client import PipedriveApi

    def no_search(*args, **kwargs):
        raise AssertionError("an indexed upsert must not search")

    monkeypatch.setattr(PipedriveApi, "search_op", no_search)
    if key_field == "email":
        rows = [{"email": "PERSON3@example.com ", "name": "Person Three"},  # existing, case and spaces differ
                {"email": "fresh@example.com", "name": "Fresh"},
                {"email": "fresh@example.com", "name": "Fresh Again"}]  # same key twice: one create, one update
    else:
        rows = [{"Customer id": "C-000003", "name": "Person Three"},
                {"Customer id": "C-NEW-1", "name": "Fresh"},
                {"Customer id": "C-NEW-1", "name": "Fresh Again"}]
    before = len(sandbox_state(sandbox, "persons"))
    first = PipedriveUpsertOperator(task_id="u", entity="persons", rows=rows, key_field=key_field,
                                    lookup="index").execute(context())
    assert (first["created"], first["updated"] + first["unchanged"]) == (1, 2)
    again = PipedriveUpsertOperator(task_id="u", entity="persons", rows=rows, key_field=key_field,
                                    lookup="index").execute(context())  # an Airflow retry of the same rows
    assert again["created"] == 0
    persons = sandbox_state(sandbox, "persons")
    assert len(persons) == before + 1
    assert [p["name"] for p in persons if p["name"].startswith("Fresh")] == ["Fresh Again"]


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (lambda h: list(h.iter_records("widgets")), CrmInputError, "unknown Pipedrive entity 'widgets'"),
        (lambda h: h.create("deals", {"title": "x", "Onbording plan": "Pro"}), CrmInputError,
         "unknown field 'Onbording plan'.*did you mean 'Onboarding plan'"),
        (lambda h: h.create("deals", {"title": "x", "Seats": "twelve"}), CrmInputError, "'Seats'.*'twelve' is not a number"),
        (lambda h: h.get("deals", 987654), CrmNotFoundError, "deals/987654.*Entity was not found"),
    ],
)
def test_bad_input_names_what_is_wrong(connections, action, error, match):
    with pytest.raises(error, match=match):
        action(PipedriveHook())


def test_plan_limit_is_a_clear_error(connections, sandbox):
    requests.patch(f"{sandbox.url}/pipedrive/_state/settings", json={"deal_limit": 1}, timeout=10)
    with pytest.raises(CrmPlanLimitError, match="limit of deals for your plan"):
        PipedriveHook().create("deals", {"title": "one too many"})


def test_oauth_refresh_rotates_and_keeps_working(monkeypatch, sandbox):
    info = sandbox.info()
    monkeypatch.setenv("AIRFLOW_CONN_PIPEDRIVE_OAUTH", json.dumps({"conn_type": "pipedrive", "extra": {
        "client_id": "sandbox-pipedrive-client", "client_secret": "sandbox-pipedrive-secret",
        "refresh_token": "sandbox-pipedrive-refresh-token", "oauth_token_url": info["pipedrive_oauth_token_url"],
        "rate_limit_store": "memory"}}))
    hook = PipedriveHook("pipedrive_oauth")
    ok, message = hook.test_connection()
    assert ok, message
    assert hook.base_url == info["pipedrive_url"]  # api_domain from the token answer
    hook.client.transport.refresh()  # the rotated refresh token is used for the next refresh
    assert hook.get("deals", 1)["id"] == 1


def test_deal_sensor_poke_and_failure(connections, context):
    hook = PipedriveHook()
    sensor = PipedriveDealSensor(task_id="s", deal_id=1, statuses=["won"], deferrable=False)
    assert not sensor.poke(context()).is_done
    hook.update("deals", 1, {"status": "won"})
    assert sensor.poke(context()).is_done
    hook.update("deals", 5, {"status": "lost"})
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="deal 5 is lost"):
        PipedriveDealSensor(task_id="s", deal_id=5, statuses=["won"], deferrable=False).poke(context())


def test_deferred_deal_sensor_polls_again_only_a_round_later(connections, context):
    """As the Pipefy card sensor: the sensor has just read the deal when it defers, so its trigger's first
    poll waits one poke interval."""
    from airflow.exceptions import TaskDeferred

    sensor = PipedriveDealSensor(task_id="s", deal_id=2, statuses=["won"], deferrable=True, poke_interval=7)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context())
    _, kwargs = deferred.value.trigger.serialize()
    assert kwargs["first_poll_after"] == kwargs["poll_interval"] == 7.0


async def test_deal_trigger_fires_when_won(connections):
    hook = PipedriveHook()
    classpath, kwargs = PipedriveDealTrigger(9, statuses=["won"], poll_interval=0.2, timeout=20).serialize()
    assert classpath == "airflow_provider_crm.triggers.pipedrive.PipedriveDealTrigger"

    async def win_later():
        await asyncio.sleep(0.5)
        await asyncio.to_thread(hook.update, "deals", 9, {"status": "won"})

    winner = asyncio.create_task(win_later())
    event = await asyncio.wait_for(anext(PipedriveDealTrigger(**kwargs).run()), 20)
    await winner
    assert event.payload["status"] == "success" and event.payload["deal_status"] == "won"


def test_a_refused_token_names_the_connection_and_never_the_token(connections, monkeypatch, sandbox):
    monkeypatch.setenv("AIRFLOW_CONN_PIPEDRIVE_BAD", json.dumps({
        "conn_type": "pipedrive", "host": connections["pipedrive_url"], "password": "not-the-token-8f3a",
        "extra": {"rate_limit_store": "memory"}}))
    with pytest.raises(CrmAuthError) as caught:
        PipedriveHook("pipedrive_bad").get("deals", 1)
    assert "connection 'pipedrive_bad'" in str(caught.value) and "8f3a" not in str(caught.value)


@pytest.mark.parametrize("entity", ["deals", "persons"])
def test_export_writes_every_value_as_the_api_gave_it(connections, context, sandbox, tmp_path, entity):
    """Exports read records shallowly (nested values pass through as raw JSON): each exported line must
    equal the record read in full through the hook, custom fields under their names and option ids as
    labels, and a CSV with chosen columns holds nested values as JSON text."""
    common = {"entity": entity, "full": True, "settle_seconds": 0}
    PipedriveExportOperator(task_id="j", path=str(tmp_path / "e.jsonl"), **common).execute(context())
    hook = PipedriveHook()
    fmap = hook.client.field_map(entity)
    expected = {r["id"]: fmap.rename_record(r) for r in hook.iter_records(entity)}
    lines = {d["id"]: d for d in map(json.loads, (tmp_path / "e.jsonl").read_text().splitlines())}
    assert lines == expected and len(lines) > 10
    # a nested value and an option label, so the comparison covers both
    assert any(isinstance(v, (dict, list)) and v for d in lines.values() for v in d.values())
    labelled = [d["name"] for d in fmap.definitions if d.get("options") and d.get("key") in fmap.by_key]
    assert any(isinstance(d.get(name), str) for d in lines.values() for name in labelled)
    nested = next(k for d in lines.values() for k, v in d.items() if isinstance(v, (dict, list)) and v)
    PipedriveExportOperator(task_id="c", path=str(tmp_path / "e.csv"), fmt="csv", fieldnames=["id", nested],
                            **common).execute(context())
    with (tmp_path / "e.csv").open(newline="") as handle:
        rows = {int(r["id"]): r for r in csv.DictReader(handle)}
    for record_id, line in lines.items():
        value = line.get(nested)
        assert rows[record_id][nested] == ("" if value is None else json.dumps(value, separators=(",", ":"),
                                                                                ensure_ascii=False))
