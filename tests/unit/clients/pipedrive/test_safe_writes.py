"""Creates retried only when safe, normalised upsert keys, per-key claims (HTTP mocked with ``responses``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import responses
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_crm.common.claims import PENDING, FileClaims, MemoryClaims, claim_name
from airflow_provider_crm.common.writes import CrmCreateOutcomeUnknownError, create_once
from airflow_provider_crm.hooks.pipedrive import PipedriveHook, key_of, normalise_key

BASE = "https://pd.test"
FIELDS = {"success": True, "data": [], "additional_data": {"next_cursor": None}}
PERSON = {"id": 77, "name": "Ann", "emails": [{"value": "ann@example.com", "primary": True}]}


@pytest.fixture
def hook(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PD_WRITES", json.dumps({
        "conn_type": "pipedrive", "host": BASE, "password": "tok", "extra": {"rate_limit_store": "memory"}}))
    return PipedriveHook("pd_writes")


def _posts() -> int:
    return sum(1 for call in responses.calls if call.request.method == "POST")


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("email", "  Ann@Example.COM ", "ann@example.com"),
    ("emails", [{"value": " ANN@example.com", "primary": True}], "ann@example.com"),
    ("phone", " +1 555 0100 ", "+1 555 0100"),
    ("Customer id", " C-7 ", "C-7"),
    ("value", 12, 12),
])
def test_keys_are_normalised_as_pipedrive_keeps_them(field, value, expected):
    assert normalise_key(field, value) == expected


def test_the_key_of_a_record_to_write_is_found_in_emails():
    assert key_of({"emails": [{"value": "Ann@Example.com"}]}, "email") == "ann@example.com"
    assert key_of({"name": "x"}, "email") is None


@responses.activate
def test_a_create_refused_with_429_is_sent_again_without_any_key(hook):
    responses.get(f"{BASE}/api/v2/personFields", json=FIELDS)
    responses.post(f"{BASE}/api/v2/persons", status=429, headers={"x-ratelimit-reset": "0.01"},
                   json={"success": False, "error": "request over limit", "errorCode": 429})
    responses.post(f"{BASE}/api/v2/persons", json={"success": True, "data": PERSON})
    assert hook.create("persons", {"name": "Ann"})["id"] == 77
    assert _posts() == 2


@responses.activate
def test_a_create_with_a_lost_answer_and_no_key_is_not_sent_again(hook):
    responses.get(f"{BASE}/api/v2/personFields", json=FIELDS)
    responses.post(f"{BASE}/api/v2/persons", status=502, json={"success": False, "error": "bad gateway"})
    with pytest.raises(CrmCreateOutcomeUnknownError, match="may have been created") as raised:
        hook.create("persons", {"name": "Ann"})
    assert isinstance(raised.value, AirflowFailException) and raised.value.status == 502  # no task retry either
    assert _posts() == 1


@responses.activate
def test_a_create_with_a_lost_answer_is_found_by_its_key_not_sent_again(hook):
    responses.get(f"{BASE}/api/v2/personFields", json=FIELDS)
    responses.post(f"{BASE}/api/v2/persons", status=502, json={"success": False, "error": "bad gateway"})
    responses.get(f"{BASE}/api/v2/persons/search", json={"success": True, "data": {"items": [
        {"result_score": 1, "item": {"id": 77}}]}})
    responses.get(f"{BASE}/api/v2/persons/77", json={"success": True, "data": PERSON})
    # the key was `email` in the row and is `emails` in the record written: the lookup still has it
    record = hook.create("persons", {"name": "Ann", "emails": [{"value": "Ann@example.com"}]}, key_field="email")
    assert record["id"] == 77 and _posts() == 1
    search = next(call.request for call in responses.calls if "/search" in call.request.url)
    assert "term=ann%40example.com" in search.url and "fields=email" in search.url


@responses.activate
def test_a_create_with_a_lost_answer_that_did_not_land_is_sent_again(hook):
    responses.get(f"{BASE}/api/v2/personFields", json=FIELDS)
    responses.post(f"{BASE}/api/v2/persons", status=502, json={"success": False, "error": "bad gateway"})
    responses.post(f"{BASE}/api/v2/persons", json={"success": True, "data": PERSON})
    responses.get(f"{BASE}/api/v2/persons/search", json={"success": True, "data": {"items": []}})
    assert hook.create("persons", {"name": "Ann"}, key_field="name")["id"] == 77
    assert _posts() == 2


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_concurrent_writers_of_one_key_create_it_once(kind, tmp_path: Path):
    claims = MemoryClaims(seconds=30) if kind == "memory" else FileClaims(tmp_path, seconds=30)
    created: list[int] = []
    records: dict[str, dict] = {}
    start = threading.Barrier(8)

    def create() -> dict:
        created.append(1)
        record = {"id": len(created)}
        records[str(record["id"])] = record
        return record

    def writer(results: list) -> None:
        start.wait()
        results.append(create_once(claims, claim_name("t", "k1"), recorded=records.get, find=lambda suspect: None,
                                   create=create, ident=lambda r: r["id"]))

    results: list = []
    threads = [threading.Thread(target=writer, args=(results,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 1
    assert sorted(made for _, made in results) == [False] * 7 + [True]
    assert {record["id"] for record, _ in results} == {1}


def test_a_pending_mark_makes_the_next_writer_search_before_creating():
    claims = MemoryClaims(seconds=5)
    name = claim_name("t", "k2")
    with claims.hold(name) as claim:
        claim.set_mark(PENDING)  # a writer died (or lost its answer) mid-create
    asked: list[bool] = []

    def find(suspect: bool) -> dict | None:
        asked.append(suspect)
        return {"id": 9} if suspect else None

    record, made = create_once(claims, name, recorded=lambda _: None, find=find,
                               create=lambda: pytest.fail("must not create"), ident=lambda r: r["id"])
    assert (record, made, asked) == ({"id": 9}, False, [True])
    assert claims.get_mark(name) == "9"
