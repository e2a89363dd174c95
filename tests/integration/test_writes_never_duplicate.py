"""Writes that never duplicate (issue 15, items 2, 3 and 5), against the sandbox over real HTTP.

- A Pipefy move whose answer was lost is not refused on its repeat: the card's phase is read first.
- Pipedrive creates refused before they ran (429) are retried, with or without a lookup; creates whose
  answer was lost are found by their key instead of being sent again; upsert keys are normalised once.
- Upserts under 5 % lost answers and 429s on creates: 0 duplicates, 0 lost rows, both services.
- A killed upsert re-run, and two upserts of the same keys at once in separate processes (file store
  and Redis), create each key once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from typing import Any

import pytest
import requests

from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.operators.pipedrive import PipedriveCreateOperator, PipedriveUpsertOperator
from airflow_provider_crm.operators.pipefy import (
    PipefyCreateCardOperator,
    PipefyMoveCardOperator,
    PipefyUpsertCardsOperator,
)

pytestmark = pytest.mark.integration


def _fault(server, **fault: Any) -> None:
    requests.post(f"{server.url}/_sandbox/faults", json=fault, timeout=10).raise_for_status()


def _counters(server) -> dict[str, Any]:
    return requests.get(f"{server.url}/_sandbox/counters", timeout=10).json()


def _state(url: str) -> Any:
    """A sandbox state read; the faulty sandbox loses these answers too, so read until one arrives."""
    for _ in range(20):
        resp = requests.get(url, timeout=30)
        if resp.status_code == 200:
            return resp.json()
    resp.raise_for_status()


def _persons(server) -> list[dict[str, Any]]:
    return _state(f"{server.url}/pipedrive/_state/persons")


def _cards(server) -> list[dict[str, Any]]:
    return _state(f"{server.url}/pipefy/_state")["cards"]


def _conn_env(server, store: str = "memory") -> dict[str, str]:
    info = server.info()
    return {
        "AIRFLOW_CONN_PIPEFY_DEFAULT": json.dumps({
            "conn_type": "pipefy", "host": info["pipefy_url"], "password": "sandbox-pipefy-token",
            "extra": {"rate_limit_store": store}}),
        "AIRFLOW_CONN_PIPEDRIVE_DEFAULT": json.dumps({
            "conn_type": "pipedrive", "host": info["pipedrive_url"], "password": "sandbox-pipedrive-token",
            "extra": {"rate_limit_store": store, "plan": "ultimate", "seats": 5}}),
    }


def _person_keys(server, prefix: str) -> Counter[str]:
    """How many live persons hold each email starting with ``prefix`` (as stored)."""
    found: Counter[str] = Counter()
    for person in _persons(server):
        if person.get("is_deleted"):
            continue
        for email in person.get("emails") or []:
            if str(email["value"]).startswith(prefix):
                found[email["value"]] += 1
    return found


def _card_keys(server, prefix: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for card in _cards(server):
        for item in card["fields"]:
            if item["field"]["id"] == "pipedrive_deal_id" and str(item["value"]).startswith(prefix):
                found.setdefault(item["value"], []).append(card)
    return found


def _tally(found: dict[str, int], expected: list[str]) -> dict[str, int]:
    """Duplicates (records beyond the first per key) and lost rows (keys with no record)."""
    return {"duplicates": sum(n - 1 for n in found.values() if n > 1),
            "lost": sum(1 for key in set(expected) if not found.get(key))}


def _person_rows(prefix: str, count: int, repeats: int = 0) -> list[dict[str, Any]]:
    """``count`` new persons keyed by email, then ``repeats`` rows repeating the first keys with other
    case and spaces around them (the same person: an update, never a second create)."""
    rows = [{"email": f"{prefix}{i:03d}@example.com", "name": f"Person {prefix}{i}"} for i in range(count)]
    rows += [{"email": f"  {prefix.upper()}{i:03d}@EXAMPLE.com ", "name": f"Renamed {prefix}{i}"}
             for i in range(repeats)]
    return rows


def _card_rows(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"deal": f"{prefix}{i:03d}", "Customer name": f"Customer {prefix}{i}"} for i in range(count)]


@pytest.fixture
def faulty(make_sandbox, monkeypatch):
    """A sandbox losing 5 % of all answers (the work is done, the answer is a 502), connections to it."""
    server = make_sandbox(lost_answer_rate=0.05)
    for name, value in _conn_env(server).items():
        monkeypatch.setenv(name, value)
    return server


# -- item 2: a move whose answer was lost ------------------------------------------------------------
def test_move_whose_answer_was_lost_succeeds(connections, context, sandbox):
    card = next(c for c in _cards(sandbox) if c["current_phase"]["name"] == "Backlog")
    _fault(sandbox, service="pipefy", mode="lost", count=1, body_contains="moveCardToPhase")
    summary = PipefyMoveCardOperator(task_id="m", card_id=card["id"], phase="Doing").execute(context())
    assert summary["moved"] is True and summary["phase"] == "Doing"
    assert _counters(sandbox)["faults"] == {"pipefy lost": 1}
    assert PipefyHook().get_card(card["id"])["current_phase"]["name"] == "Doing"


@pytest.mark.stress  # 150 keys under faults: `make stress`, not `make test`
def test_pipefy_upsert_with_phase_under_lost_answers_loses_and_repeats_nothing(faulty, context, tmp_path):
    rows = _card_rows("LA-", 150)
    kwargs = {"pipe_id": "301", "key_field": "Pipedrive deal id", "field_map": {"deal": "Pipedrive deal id"},
              "phase": "Doing", "rejects_path": str(tmp_path / "rejects.jsonl")}
    summary = PipefyUpsertCardsOperator(task_id="u", max_failure_ratio=1.0, rows=rows, **kwargs).execute(context())
    cards = _card_keys(faulty, "LA-")
    assert _tally({k: len(v) for k, v in cards.items()}, [r["deal"] for r in rows]) == {"duplicates": 0, "lost": 0}
    assert (summary["created"], summary["failed"]) == (150, 0), summary["errors"]
    counters = _counters(faulty)
    assert counters["faults"].get("pipefy lost", 0) >= 10  # 5 % of several hundred requests
    assert {found[0]["current_phase"]["name"] for found in cards.values()} == {"Doing"}
    again = PipefyUpsertCardsOperator(task_id="u", rows=rows, **kwargs).execute(context())
    assert (again["created"], again["unchanged"], again["failed"]) == (0, 150, 0)
    assert all(len(found) == 1 for found in _card_keys(faulty, "LA-").values())


# -- item 3: Pipedrive creates ----------------------------------------------------------------------
def test_create_without_key_field_is_retried_after_a_429(connections, context, sandbox):
    _fault(sandbox, service="pipedrive", mode="429", count=1, method="POST", path_contains="/api/v2/persons")
    summary = PipedriveCreateOperator(task_id="c", entity="persons",
                                      data={"name": "After 429", "emails": [{"value": "after429@example.com"}]},
                                      ).execute(context())
    assert summary["created"] is True
    assert _counters(sandbox)["rate_limited"] == {"pipedrive": 1}
    assert _person_keys(sandbox, "after429@") == {"after429@example.com": 1}


def test_create_whose_answer_was_lost_without_key_field_is_not_sent_twice(connections, context, sandbox):
    from airflow_provider_crm.common.writes import CrmCreateOutcomeUnknownError

    _fault(sandbox, service="pipedrive", mode="lost", count=1, method="POST", path_contains="/api/v2/persons")
    with pytest.raises(CrmCreateOutcomeUnknownError, match="may have been created"):  # not retried by Airflow
        PipedriveCreateOperator(task_id="c", entity="persons",
                                data={"name": "Lost", "emails": [{"value": "lostonce@example.com"}]}).execute(context())
    assert _person_keys(sandbox, "lostonce@") == {"lostonce@example.com": 1}  # landed once, never repeated


@pytest.mark.parametrize("lookup", ["index", "search"])
def test_upsert_creates_whose_answers_were_lost_are_found_not_repeated(connections, context, sandbox, lookup):
    """The issue's case: `email` had become `emails`, so the create had no key to look up; the row was
    reported failed although the person existed, and with the index a later row with the same key
    created a second person."""
    rows = _person_rows("lostkey", 20, repeats=20)
    _fault(sandbox, service="pipedrive", mode="lost", count=20, method="POST", path_contains="/api/v2/persons")
    summary = PipedriveUpsertOperator(task_id="u", entity="persons", rows=rows, key_field="email",
                                      lookup=lookup, max_failure_ratio=1.0).execute(context())
    keys = _person_keys(sandbox, "lostkey")
    assert _tally(keys, [r["email"] for r in rows[:20]]) == {"duplicates": 0, "lost": 0}
    assert (summary["created"], summary["updated"], summary["failed"]) == (20, 20, 0), summary["errors"]
    assert keys == {f"lostkey{i:03d}@example.com": 1 for i in range(20)}
    names = {p["name"] for p in _persons(sandbox) if p["name"].startswith(("Person lostkey", "Renamed lostkey"))}
    assert names == {f"Renamed lostkey{i}" for i in range(20)}


@pytest.mark.stress  # 150 keys under faults: `make stress`, not `make test`
@pytest.mark.parametrize(("lookup", "count"), [("index", 150), ("search", 40)])
def test_pipedrive_upsert_under_lost_answers_and_429s_loses_and_repeats_nothing(faulty, context, lookup, count):
    rows = _person_rows(f"f{lookup}", count, repeats=count // 5)
    _fault(faulty, service="pipedrive", mode="429", count=3, method="POST", path_contains="/api/v2/persons")
    summary = PipedriveUpsertOperator(task_id="u", entity="persons", rows=rows, key_field="email",
                                      lookup=lookup, max_failure_ratio=1.0).execute(context())
    keys = _person_keys(faulty, f"f{lookup}")
    assert _tally(keys, [r["email"] for r in rows[:count]]) == {"duplicates": 0, "lost": 0}
    assert (summary["created"], summary["failed"]) == (count, 0), summary["errors"]
    assert summary["updated"] == count // 5
    counters = _counters(faulty)
    assert counters["faults"].get("pipedrive 429") == 3 and counters["faults"].get("pipedrive lost", 0) >= 3
    assert _person_keys(faulty, f"f{lookup}") == {f"f{lookup}{i:03d}@example.com": 1 for i in range(count)}
    again = PipedriveUpsertOperator(task_id="u", entity="persons", rows=rows, key_field="email",
                                    lookup=lookup).execute(context())
    assert (again["created"], again["failed"]) == (0, 0)
    assert _person_keys(faulty, f"f{lookup}") == {f"f{lookup}{i:03d}@example.com": 1 for i in range(count)}


# -- item 5: killed and concurrent upserts ----------------------------------------------------------
def _upsert_worker(service: str, env: dict[str, str], kwargs: dict[str, Any], start: Any, results: Any) -> None:
    os.environ.update(env)
    from tests.integration.conftest import FakeTI

    if service == "pipedrive":
        op: Any = PipedriveUpsertOperator(task_id="u", **kwargs)
    elif service == "pipefy-create":
        op = PipefyCreateCardOperator(task_id="c", **kwargs)
    elif service == "pipedrive-create":
        op = PipedriveCreateOperator(task_id="c", **kwargs)
    else:
        op = PipefyUpsertCardsOperator(task_id="u", **kwargs)
    op.hook.limiter  # noqa: B018  (connection read and store opened before the start line)
    start.wait(60)
    try:
        summary = op.execute({"ti": FakeTI(), "data_interval_start": None, "data_interval_end": None,
                              "outlet_events": None})
        results.put(("ok", {k: summary[k] for k in ("created", "updated", "unchanged", "failed") if k in summary}))
    except BaseException as err:  # reported to the test
        results.put(("error", repr(err)))


def _run_together(service: str, env: dict[str, str], kwargs: dict[str, Any], processes: int = 2) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_upsert_worker, args=(service, env, kwargs, start, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    time.sleep(0.1)
    start.set()
    outcomes = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    return outcomes


def _store(kind: str, request, tmp_path) -> str:
    return request.getfixturevalue("redis_url") if kind == "redis" else f"file://{tmp_path / 'store'}"


@pytest.mark.stress  # 150 keys under faults: `make stress`, not `make test`
@pytest.mark.parametrize(("store_kind", "lookup", "count"),
                         [("file", "index", 150), ("redis", "index", 150), ("file", "search", 30)])
def test_two_pipedrive_upserts_of_the_same_keys_at_once_create_each_once(sandbox, request, tmp_path, store_kind,
                                                                           lookup, count):
    rows = _person_rows(f"c{store_kind}{lookup}", count)
    env = _conn_env(sandbox, _store(store_kind, request, tmp_path))
    outcomes = _run_together("pipedrive", env, {"entity": "persons", "rows": rows, "key_field": "email",
                                                "lookup": lookup})
    keys = _person_keys(sandbox, f"c{store_kind}{lookup}")
    assert _tally(keys, [r["email"] for r in rows]) == {"duplicates": 0, "lost": 0}
    assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
    assert sum(o[1]["created"] for o in outcomes) == count
    assert all(o[1]["failed"] == 0 for o in outcomes)
    assert keys == {f"c{store_kind}{lookup}{i:03d}@example.com": 1 for i in range(count)}


@pytest.mark.stress  # 150 keys under faults: `make stress`, not `make test`
@pytest.mark.parametrize("store_kind", ["file", "redis"])
def test_two_pipefy_upserts_of_the_same_keys_at_once_create_each_once(sandbox, request, tmp_path, store_kind):
    rows = _card_rows(f"C{store_kind}-", 150)
    env = _conn_env(sandbox, _store(store_kind, request, tmp_path))
    outcomes = _run_together("pipefy", env, {"pipe_id": "301", "rows": rows, "key_field": "Pipedrive deal id",
                                             "field_map": {"deal": "Pipedrive deal id"}, "phase": "Doing"})
    cards = _card_keys(sandbox, f"C{store_kind}-")
    assert _tally({k: len(v) for k, v in cards.items()}, [r["deal"] for r in rows]) == {"duplicates": 0, "lost": 0}
    assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
    assert sum(o[1]["created"] for o in outcomes) == 150


def test_create_operators_with_a_key_overlapping_each_other_create_once(sandbox, tmp_path):
    """An Airflow retry overlapping a zombie try of the same create: two at once, one record each."""
    env = _conn_env(sandbox, f"file://{tmp_path / 'store'}")
    card = _run_together("pipefy-create", env, {"pipe_id": "301", "key_field": "Pipedrive deal id",
                                                "fields": {"Customer name": "Zombie", "Pipedrive deal id": "Z-1"}},
                         processes=2)
    person = _run_together("pipedrive-create", env, {"entity": "persons", "key_field": "email",
                                                     "data": {"name": "Zombie", "emails": [{"value": "z1@example.com"}]}},
                           processes=2)
    assert [o[0] for o in card + person] == ["ok"] * 4, card + person
    assert sum(o[1]["created"] for o in card) == 1 and sum(o[1]["created"] for o in person) == 1
    assert {k: len(v) for k, v in _card_keys(sandbox, "Z-").items()} == {"Z-1": 1}
    assert _person_keys(sandbox, "z1@") == {"z1@example.com": 1}


@pytest.mark.stress  # 150 keys under faults: `make stress`, not `make test`
@pytest.mark.parametrize("store_kind", ["file", "redis"])
def test_killed_pipedrive_upsert_rerun_is_exact(make_sandbox, monkeypatch, request, tmp_path, store_kind):
    server = make_sandbox(latency_ms=15)
    env = _conn_env(server, _store(store_kind, request, tmp_path))
    env["AIRFLOW__CRM__UPSERT_CLAIM_SECONDS"] = "5"  # a killed worker's Redis claims expire this soon
    prefix = f"k{store_kind}"
    rows = _person_rows(prefix, 150, repeats=30)
    kwargs = {"entity": "persons", "rows": rows, "key_field": "email", "lookup": "index"}
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_upsert_worker, args=("pipedrive", env, kwargs, start, results))
    proc.start()
    start.set()
    for _ in range(6000):  # kill it part-way through (when 40 of the 150 exist), whatever the machine's speed
        if sum(_person_keys(server, prefix).values()) >= 40 or not proc.is_alive():
            break
        time.sleep(0.02)
    assert proc.is_alive(), "the upsert finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert 40 <= sum(_person_keys(server, prefix).values()) < 150
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    summary = PipedriveUpsertOperator(task_id="u", max_failure_ratio=1.0, **kwargs).execute(
        {"ti": None, "data_interval_start": None, "data_interval_end": None, "outlet_events": None})
    expected = [f"{prefix}{i:03d}@example.com" for i in range(150)]
    assert _tally(_person_keys(server, prefix), expected) == {"duplicates": 0, "lost": 0}
    assert summary["failed"] == 0
    assert _person_keys(server, prefix) == {f"{prefix}{i:03d}@example.com": 1 for i in range(150)}
    names = {p["name"] for p in _persons(server) if p["name"].split(" ")[-1].startswith(prefix)}
    assert names == {f"Renamed {prefix}{i}" for i in range(30)} | {f"Person {prefix}{i}" for i in range(30, 150)}
