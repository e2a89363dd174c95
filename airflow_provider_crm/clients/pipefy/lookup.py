"""How an upsert finds the card of a row's key: one findCards per row (``search``), or the pipe's cards
read once into an in-memory :class:`CardIndex` (``index``); ``auto`` takes whichever needs fewer requests.

No Airflow here: the operator only passes the rows' count and logs :meth:`LookupPlan.describe`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from airflow_provider_crm.clients.pipefy.client import PipefyClient
from airflow_provider_crm.clients.pipefy.pagination import pages_for
from airflow_provider_crm.clients.pipefy.values import TEXT_TYPES, machine_value
from airflow_provider_crm.common.errors import CrmInputError

LOOKUPS = ("auto", "search", "index")
# auto indexes at most this many cards: the index holds them all in the task's memory (a few KB each)
MAX_AUTO_INDEX_CARDS = 20_000
_NUMBER_TYPES = ("number", "currency")
_MACHINE = ("array_value", "date_value", "datetime_value", "float_value")


def check_lookup(lookup: str) -> str:
    if lookup not in LOOKUPS:
        raise CrmInputError(f"lookup must be auto, search or index, not {lookup!r}")
    return lookup


@dataclass(frozen=True)
class LookupPlan:
    """The lookup chosen for an upsert, and the request counts it was chosen on."""

    lookup: str  # "index" or "search"
    rows: int
    cards: int  # in the pipe, from its phases' cards_count
    index_requests: int  # pages of the pipe's cards
    search_requests: int  # one findCards per row
    reason: str

    @property
    def requests(self) -> int:
        """Requests spent on finding cards (writes not counted)."""
        return self.index_requests if self.lookup == "index" else self.search_requests

    def read_index(self, client: PipefyClient, pipe_id: str | int, key: dict[str, Any]) -> CardIndex | None:
        """The pipe's cards by key when the index was chosen (its pages' requests), else None."""
        return CardIndex.read(client, pipe_id, key) if self.lookup == "index" else None

    def describe(self) -> str:
        return (f"lookup: {self.lookup} ({self.reason}; {self.rows} rows, {self.cards} cards in the pipe: "
                f"{self.index_requests} requests to read the pipe vs {self.search_requests} findCards)")


def choose_lookup(lookup: str, rows: int, cards: int, page_size: int, key_type: str | None) -> LookupPlan:
    """``search`` or ``index`` as asked; for ``auto``, the index when reading the whole pipe takes fewer
    requests than one findCards per row (``ceil(cards / page_size) < rows``), the key is a text field
    and the pipe holds at most :data:`MAX_AUTO_INDEX_CARDS` cards.

    Keys of other types (numbers, dates, lists) are searched under ``auto``: how Pipefy's findCards
    matches them is unconfirmed, and an index that misses a card findCards would find creates a duplicate.
    """
    pages, searches = pages_for(cards, page_size), rows
    if check_lookup(lookup) != "auto":
        choice, reason = lookup, "as asked"
    elif (key_type or "short_text") not in TEXT_TYPES:
        choice, reason = "search", f"the key is a {key_type} field, whose findCards match is unconfirmed"
    elif cards > MAX_AUTO_INDEX_CARDS:
        choice, reason = "search", f"the pipe holds more than {MAX_AUTO_INDEX_CARDS:,} cards to keep in memory"
    elif pages < searches:
        choice, reason = "index", "reading the pipe takes fewer requests"
    else:
        choice, reason = "search", "one findCards per row takes no more requests than reading the pipe"
    return LookupPlan(choice, rows, cards, pages, searches, reason)


def plan_lookup(client: PipefyClient, pipe_id: str | int, key: dict[str, Any], lookup: str, rows: int) -> LookupPlan:
    """Choose the lookup from the pipe's card count: its phases' ``cards_count``, from the pipe read the
    upsert has already made (cached by the client), so choosing takes no request."""
    cards = sum(phase.get("cards_count") or 0 for phase in client.get_pipe(pipe_id).get("phases") or [])
    return choose_lookup(lookup, rows, cards, client.page_size, key.get("type"))


def match_forms(item: dict[str, Any]) -> tuple[set[str], float | None]:
    """The ``fieldValue`` texts that find a card by this field, and its number (matched numerically).

    The sandbox's findCards rule (crm_sandbox/pipefy_data.py ``matches_exact``), which follows the API
    notes' "exact, case-sensitive": the display ``value`` or the stored (machine) value as text; a
    number by numeric equality; a list as its JSON text or its only item. For text fields, the only ones
    ``auto`` indexes, every form is the text itself. How Pipefy matches other types is unconfirmed.
    """
    texts = {str(item["value"])} if item.get("value") is not None else set()
    machine, number = machine_value(item), None
    if isinstance(machine, list):
        texts.add(json.dumps(machine))
        if len(machine) == 1:
            texts.add(str(machine[0]))
    elif (item.get("field") or {}).get("type") in _NUMBER_TYPES or isinstance(machine, float):
        number = _number(machine)
    elif machine is not None:
        texts.add(str(machine))
    return texts, number


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _compact(card: dict[str, Any]) -> dict[str, Any]:
    """What an upsert uses of a card (id, title, phase, fields' values): a large pipe held in memory."""
    fields = [{"field": {"id": item["field"]["id"], "type": item["field"].get("type")}, "value": item.get("value"),
               **{k: item[k] for k in _MACHINE if item.get(k) is not None}} for item in card.get("fields") or []]
    return {"id": card["id"], "title": card.get("title"), "current_phase": card.get("current_phase"),
            "fields": fields}


class CardIndex:
    """A pipe's cards by their key field's value, read once (allCards), looked up as findCards would.

    Matching follows :func:`match_forms`; where several cards hold a key, :meth:`find` lists them in
    the order read, as findCards lists them, and the upsert takes the first, as its search does. Cards
    the upsert creates are added at once and updated ones patched, so a later row of the same key (the
    upsert loop runs them in order) updates the card instead of creating another. Thread safe: the
    loop looks up and adds keys from up to 32 threads. Cards created by others after the read are not
    seen (the create itself still runs under the key's claim, common/writes.py).
    """

    def __init__(self, key: dict[str, Any]) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._texts: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self._numbers: dict[float, list[tuple[int, dict[str, Any]]]] = {}
        self._added = 0

    @classmethod
    def read(cls, client: PipefyClient, pipe_id: str | int, key: dict[str, Any]) -> CardIndex:
        index = cls(key)
        for card in client.iter_pipe_cards(pipe_id):
            index.add(_compact(card))
        return index

    def __len__(self) -> int:
        return self._added

    def add(self, card: dict[str, Any], wanted: str | None = None) -> None:
        """Index ``card`` under its key field's value (and ``wanted``, the key a row created it with)."""
        item = next((i for i in card.get("fields") or [] if i["field"]["id"] == self.key["id"]), None)
        texts, number = match_forms(item) if item is not None else (set(), None)
        if wanted is not None:
            texts.add(wanted)
        with self._lock:
            self._added += 1
            entry = (self._added, card)
            for text in texts:
                self._texts.setdefault(text, []).append(entry)
            if number is not None:
                self._numbers.setdefault(number, []).append(entry)

    def find(self, wanted: str) -> list[dict[str, Any]]:
        """The cards findCards would answer for ``fieldValue: wanted``, in the order they were read."""
        if self.key.get("type") == "connector":  # as findCards refuses it, so every row is rejected alike
            raise CrmInputError(f"connector field {self.key.get('label')!r} cannot be searched (findCards)")
        number = _number(wanted)
        with self._lock:
            entries = [*self._texts.get(wanted, ()), *(self._numbers.get(number, ()) if number is not None else ())]
        return [card for _, card in sorted(dict(entries).items())]

    def patch(self, card: dict[str, Any], items: list[dict[str, Any]], title: str | None = None,
              phase: dict[str, Any] | None = None) -> None:
        """Keep an indexed card as a write left it: field items replaced, title or phase set."""
        with self._lock:
            changed = {item["field"]["id"] for item in items}
            card["fields"] = [i for i in card.get("fields") or [] if i["field"]["id"] not in changed] + items
            if title:
                card["title"] = title
            if phase is not None:
                card["current_phase"] = phase
