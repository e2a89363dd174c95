"""Cards and table records as export rows: attributes, then each field by label and by id with its
machine-readable value, and ``<field id>__display`` with the display text."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from airflow_provider_crm.clients.pipefy.values import flatten_card_fields

CARD_COLUMNS = ("id", "title", "phase_id", "phase", "pipe_id", "createdAt", "updated_at", "finished_at", "done",
                "due_date", "assignees", "labels", "url")
RECORD_COLUMNS = ("id", "title", "created_at", "updated_at")


def card_row(card: dict[str, Any]) -> dict[str, Any]:
    row = {
        "id": card["id"], "title": card.get("title"),
        "phase_id": (card.get("current_phase") or {}).get("id"), "phase": (card.get("current_phase") or {}).get("name"),
        "pipe_id": (card.get("pipe") or {}).get("id"), "createdAt": card.get("createdAt"),
        "updated_at": card.get("updated_at"), "finished_at": card.get("finished_at"), "done": card.get("done"),
        "due_date": card.get("due_date"), "assignees": [a.get("email") or a.get("id") for a in card.get("assignees") or []],
        "labels": [label.get("name") for label in card.get("labels") or []], "url": card.get("url"),
    }
    row.update(flatten_card_fields(card))
    return row


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """A table record as an export row: attributes, then each field by label and by id."""
    row = {k: record.get(k) for k in RECORD_COLUMNS}
    row.update(flatten_card_fields(record))
    return row


def columns(first: Iterable[str], fields: Iterable[dict[str, Any]]) -> list[str]:
    """A CSV header: ``first``, then each field's label, id and ``<id>__display`` (once each)."""
    out = list(first)
    for field in fields:
        out += [name for name in (field["label"], field["id"], f"{field['id']}__display") if name not in out]
    return out


def updated_within(node: dict[str, Any], start: datetime | None, end: datetime | None) -> bool:
    """Whether ``updated_at`` is in ``[start, end)`` (``None``: unbounded), compared in whole seconds
    as the API filters, so a card in the boundary second belongs to the later range only."""
    if start is None and end is None:
        return True
    stamp = datetime.fromisoformat(str(node["updated_at"]).replace("Z", "+00:00"))
    stamp = (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    stamp = stamp.replace(microsecond=0)
    return (start is None or stamp >= start) and (end is None or stamp < end)
