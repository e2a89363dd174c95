"""PipefyUpsertCardsOperator's lookup (issue 18): ``auto`` reads the pipe once when that takes fewer requests
than one findCards per row, and ``index`` gives the outcomes ``search`` gives, over real HTTP."""

from __future__ import annotations

import json

import pytest
import requests

from airflow_provider_crm.clients.pipefy.lookup import CardIndex
from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.operators.pipefy import PipefyUpsertCardsOperator
from crm_sandbox.pipefy_data import PipefyData

pytestmark = pytest.mark.integration

# pipe 302 (Support tickets), seeded with 6 phases x 30 cards: 180 cards, 4 pages of 50
PIPE, CARDS, PAGES = "302", 180, 4


def counters(sandbox) -> dict:
    return requests.get(f"{sandbox.url}/_sandbox/counters", timeout=10).json()


def requests_by_endpoint(sandbox, before: dict) -> dict[str, int]:
    after = counters(sandbox)["by_endpoint"]
    spent = {k.removeprefix("pipefy "): v - before["by_endpoint"].get(k, 0) for k, v in after.items()
             if k.startswith("pipefy ")}
    return {k: v for k, v in spent.items() if v}


def pipe_cards(sandbox) -> list[dict]:
    cards = requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()["cards"]
    return [c for c in cards if c["pipe"]["id"] == PIPE]


def upsert(rows, **kwargs) -> dict:
    op = PipefyUpsertCardsOperator(task_id="u", pipe_id=PIPE, rows=rows, key_field="Requester", **kwargs)
    return op.execute({"ti": None, "outlet_events": None})


def new_rows(count: int, tag: str) -> list[dict]:
    # each test its own keys: the claims' marks (common/writes.py) outlive a sandbox reset in this process
    return [{"Requester": f"{tag}{i}@example.com", "Priority": "High", "Hours": str(i % 9)} for i in range(count)]


def test_auto_reads_a_small_pipe_once_instead_of_one_find_per_row(connections, sandbox):
    assert len(pipe_cards(sandbox)) == CARDS
    before = counters(sandbox)
    summary = upsert(new_rows(20, "small"))
    assert summary["lookup"] == "index" and summary["created"] == 20
    # the pipe's metadata (with its phases' cards_count), its cards in 4 pages, one create per row
    assert requests_by_endpoint(sandbox, before) == {"Pipe": 1, "AllCards": PAGES, "CreateCard": 20}


def test_auto_searches_when_the_pipe_has_more_pages_than_rows(connections, sandbox):
    before = counters(sandbox)
    summary = upsert(new_rows(PAGES - 1, "few"))
    assert summary["lookup"] == "search" and summary["created"] == PAGES - 1
    assert requests_by_endpoint(sandbox, before) == {"Pipe": 1, "FindCards": PAGES - 1, "CreateCard": PAGES - 1}


def test_auto_searches_when_reading_the_pipe_takes_as_many_requests_as_finding(connections, sandbox):
    before = counters(sandbox)
    assert upsert(new_rows(PAGES, "as-many"))["lookup"] == "search"
    assert requests_by_endpoint(sandbox, before)["FindCards"] == PAGES


def outcome_of(lookup: str, sandbox, tmp_path) -> list:
    """The same input upserted from the seeded state: summary, rejects and the pipe's cards afterwards."""
    requests.post(f"{sandbox.url}/_sandbox/reset", timeout=10).raise_for_status()
    seeded = pipe_cards(sandbox)
    held = {f["field"]["id"]: f["value"] for f in seeded[0]["fields"]}  # an existing ticket, as it is
    other = {f["field"]["id"]: f["value"] for f in seeded[1]["fields"]}
    # a second card holding the key of seeded[2]: a key held by two cards
    twice = {f["field"]["id"]: f["value"] for f in seeded[2]["fields"]}["requester"]
    hook = PipefyHook()
    extra = hook.create_card(PIPE, title="Copy", fields={"Requester": twice, "Hours": 1})
    known = {c["id"] for c in seeded} | {extra["id"]}
    rows = [
        {"Requester": held["requester"], "Priority": held["priority"], "Hours": held.get("hours")},  # unchanged
        {"Requester": other["requester"], "Priority": "High", "Hours": "40"},  # updated
        {"Requester": twice, "Hours": "7"},  # held by two cards: the first one listed is updated
        {"Requester": f"dup-{lookup}@example.com", "Priority": "Low", "Hours": "1"},  # created
        {"Requester": f"dup-{lookup}@example.com", "Priority": "Low", "Hours": "2"},  # the same key again: updated
        {"Requester": f"dup-{lookup}@example.com", "Priority": "Low", "Hours": "2"},  # and again: unchanged
        {"Requester": f"Dup-{lookup}@example.com", "Priority": "Low", "Hours": "3"},  # case-sensitive: another card
        {"Requester": f"bad-{lookup}@example.com", "Priority": "Urgent"},  # not an option: rejected
        {"Requester": "", "Hours": "1"},  # no key: rejected
        {"Requester": f"new-{lookup}@example.com", "Hours": "5", "Colour": "red"},  # no such field: rejected
    ]
    rejects = tmp_path / f"rejects-{lookup}.jsonl"
    before = counters(sandbox)
    summary = upsert(rows, lookup=lookup, rejects_path=str(rejects), max_failure_ratio=1.0)
    spent = requests_by_endpoint(sandbox, before)
    assert summary["lookup"] == lookup
    assert ("FindCards" in spent) == (lookup == "search") and ("AllCards" in spent) == (lookup == "index")
    # a later row of a key the run created finds that card (not through the claim's mark: no card read)
    assert "Card" not in spent, spent
    failed = sorted((e["row"], e["error"]) for e in map(json.loads, rejects.read_text().splitlines()))
    cards = sorted(
        (c["id"] if c["id"] in known else "new", c["title"], c["current_phase"]["name"],
         json.dumps(sorted((f["field"]["id"], f["value"]) for f in c["fields"])))
        for c in pipe_cards(sandbox))
    counts = {k: summary[k] for k in ("created", "updated", "unchanged", "failed")}
    # the new keys carry the lookup's name (claims' marks outlive a reset): compared without it
    return json.loads(json.dumps([counts, failed, cards]).replace(f"-{lookup}@", "@"))


def test_index_and_search_give_the_same_outcomes(connections, sandbox, tmp_path):
    searched = outcome_of("search", sandbox, tmp_path)
    indexed = outcome_of("index", sandbox, tmp_path)
    assert searched[0] == {"created": 2, "updated": 3, "unchanged": 2, "failed": 3}
    assert len(searched[1]) == 3 and sum(1 for card in searched[2] if card[0] == "new") == 2
    assert indexed == searched


def test_a_key_held_by_two_cards_updates_the_same_card_either_way(connections, sandbox):
    for lookup in ("search", "index"):
        requests.post(f"{sandbox.url}/_sandbox/reset", timeout=10).raise_for_status()
        first = pipe_cards(sandbox)[0]
        key = next(f["value"] for f in first["fields"] if f["field"]["id"] == "requester")
        copy = PipefyHook().create_card(PIPE, title="Copy", fields={"Requester": key, "Hours": 1})
        summary = upsert([{"Requester": key, "Hours": "33"}], lookup=lookup)
        hours = {c["id"]: next(f["value"] for f in c["fields"] if f["field"]["id"] == "hours")
                 for c in pipe_cards(sandbox) if c["id"] in (first["id"], copy["id"])}
        assert summary["updated"] == 1, lookup
        assert hours == {first["id"]: "33", copy["id"]: "1"}, lookup


def test_running_the_upsert_again_as_a_retry_creates_nothing_twice(connections, sandbox):
    rows = new_rows(30, "retry") + [{"Requester": "retry3@example.com", "Priority": "Low", "Hours": "8"}]
    first = upsert(rows, phase="Triage")
    again = upsert(rows, phase="Triage")  # a new operator, hook and index: what an Airflow retry runs
    assert (first["lookup"], again["lookup"]) == ("index", "index")
    assert (first["created"], first["updated"]) == (30, 1)
    # retry3's two rows set it back and forth: both update again; the other 29 are as written
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 2, 29)
    keys = [f["value"] for c in pipe_cards(sandbox) for f in c["fields"]
            if f["field"]["id"] == "requester" and f["value"].startswith("retry")]
    assert len(keys) == 30 and len(set(keys)) == 30
    assert {c["current_phase"]["name"] for c in pipe_cards(sandbox)
            if any(f["value"] in keys for f in c["fields"])} == {"Triage"}


@pytest.mark.parametrize("field", [
    {"id": "f", "label": "F", "type": "short_text"},
    {"id": "f", "label": "F", "type": "number"},
    {"id": "f", "label": "F", "type": "date"},
    {"id": "f", "label": "F", "type": "datetime"},
    {"id": "f", "label": "F", "type": "checklist_vertical"},
], ids=lambda f: f["type"])
def test_the_index_matches_as_the_sandboxs_find_cards_does(field):
    """The index's rule against the emulator's own (``matches_exact``) on values read as Pipefy reads them."""
    data = PipefyData.__new__(PipefyData)  # matches_exact / read_value need no seeded data
    stored = {"short_text": ["Acme", "acme", "10"], "number": [10.0, 2.5], "date": ["2026-03-01"],
              "datetime": ["2026-03-01T10:00:00Z"], "checklist_vertical": [["A"], ["A", "B"]]}[field["type"]]
    wanted = ["Acme", "acme", "ACME", "10", "10.0", "10.00", "2.5", "01/03/2026", "2026-03-01",
              "2026-03-01T10:00:00Z", "01/03/2026 10:00", "A", '["A"]', '["A", "B"]', "['A']", ""]
    index = CardIndex(field)
    for n, value in enumerate(stored):
        index.add({"id": str(n), "fields": [data.read_value(field, value, None)]})
    for text in wanted:
        expected = [str(n) for n, value in enumerate(stored) if data.matches_exact(field, value, text)]
        assert [card["id"] for card in index.find(text)] == expected, text
