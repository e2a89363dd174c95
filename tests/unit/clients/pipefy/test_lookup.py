"""The upsert lookup's rule (``auto``) and the card index, without HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_provider_crm.clients.pipefy.lookup import MAX_AUTO_INDEX_CARDS, CardIndex, choose_lookup
from airflow_provider_crm.common.errors import CrmInputError

KEY = {"id": "key", "label": "Key", "type": "short_text"}


@pytest.mark.parametrize(("rows", "cards", "page_size", "chosen"), [
    (20, 180, 50, "index"),  # 4 pages < 20 finds
    (5, 180, 50, "index"),  # 4 < 5
    (4, 180, 50, "search"),  # 4 pages = 4 finds: no gain
    (3, 180, 50, "search"),
    (1000, 30, 50, "index"),  # the benchmark's pipe: one page
    (2, 0, 50, "index"),  # an empty pipe still takes one request to read
    (1, 0, 50, "search"),
    (0, 0, 50, "search"),
    (10, 500, 50, "search"),  # 10 pages = 10 finds
    (11, 500, 50, "index"),
    (11, 500, 20, "search"),  # smaller pages: 25 requests
])
def test_auto_indexes_when_reading_the_pipe_takes_fewer_requests(rows, cards, page_size, chosen):
    plan = choose_lookup("auto", rows, cards, page_size, "short_text")
    assert plan.lookup == chosen
    assert plan.index_requests == max(1, -(-cards // page_size)) and plan.search_requests == rows
    assert plan.requests == (plan.index_requests if chosen == "index" else rows)
    assert f"{rows} rows, {cards} cards" in plan.describe() and chosen in plan.describe()


@pytest.mark.parametrize("key_type", ["number", "date", "datetime", "checklist_vertical", "connector"])
def test_auto_searches_keys_whose_find_cards_match_is_unconfirmed(key_type):
    plan = choose_lookup("auto", 1000, 10, 50, key_type)
    assert plan.lookup == "search" and key_type in plan.reason


def test_auto_does_not_hold_a_big_pipe_in_memory():
    # 100,000 rows against 30,000 cards: 600 pages would be fewer requests, but not 30,000 cards in memory
    plan = choose_lookup("auto", 100_000, MAX_AUTO_INDEX_CARDS + 1, 50, "short_text")
    assert plan.lookup == "search" and "memory" in plan.reason
    assert choose_lookup("auto", 100_000, MAX_AUTO_INDEX_CARDS, 50, "short_text").lookup == "index"
    assert choose_lookup("index", 10, MAX_AUTO_INDEX_CARDS + 1, 50, "short_text").lookup == "index"


@pytest.mark.parametrize("lookup", ["search", "index"])
def test_an_explicit_lookup_is_used_as_given(lookup):
    assert choose_lookup(lookup, 1, 100_000, 50, "short_text").lookup == lookup
    assert choose_lookup(lookup, 100_000, 1, 50, "number").lookup == lookup


def test_an_unknown_lookup_is_refused():
    with pytest.raises(CrmInputError, match="auto, search or index"):
        choose_lookup("cache", 1, 1, 50, "short_text")


def card(ident: str, value: str | None, ftype: str = "short_text") -> dict:
    fields = [] if value is None else [{"field": {"id": "key", "type": ftype}, "value": value}]
    return {"id": ident, "title": ident, "fields": fields}


def test_the_index_matches_exactly_and_lists_cards_of_a_key_in_read_order():
    index = CardIndex(KEY)
    for item in (card("1", "Acme"), card("2", "acme"), card("3", None), card("4", "Acme")):
        index.add(item)
    assert [c["id"] for c in index.find("Acme")] == ["1", "4"]
    assert [c["id"] for c in index.find("acme")] == ["2"]
    assert index.find("ACME") == [] and index.find(" Acme") == [] and index.find("") == []
    created = {"id": "5", "title": "new", "fields": []}
    index.add(created, wanted="Zed")  # a card the upsert created: found at once under the row's key
    assert index.find("Zed") == [created]


def test_a_connector_key_is_refused_as_find_cards_refuses_it():
    with pytest.raises(CrmInputError, match="connector"):
        CardIndex({"id": "key", "label": "Key", "type": "connector"}).find("1")


def test_patches_keep_an_indexed_card_as_written():
    index = CardIndex(KEY)
    item = card("1", "Acme")
    index.add(item)
    index.patch(item, [{"field": {"id": "hours", "type": "number"}, "value": "3", "float_value": "3"}], title="T")
    index.patch(item, [], phase={"id": "9", "name": "Done"})
    found = index.find("Acme")[0]
    assert found["title"] == "T" and found["current_phase"]["id"] == "9"
    assert {f["field"]["id"] for f in found["fields"]} == {"key", "hours"}


def test_the_index_is_safe_for_the_upsert_loops_threads():
    index = CardIndex(KEY)
    keys = [f"k{n}" for n in range(2000)]

    def write(key: str) -> bool:  # what one lane does: look up, create, look up again
        if index.find(key):
            return False
        index.add({"id": key, "title": key, "fields": []}, wanted=key)
        return [c["id"] for c in index.find(key)] == [key]

    with ThreadPoolExecutor(max_workers=32) as pool:
        assert all(pool.map(write, keys))
    assert len(index) == len(keys) and all(len(index.find(k)) == 1 for k in keys)
