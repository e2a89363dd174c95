"""A card created at most once per key, whoever else writes the same key at the same time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_provider_crm.clients.pipefy.client import PipefyClient
from airflow_provider_crm.clients.pipefy.values import machine_value, same_value
from airflow_provider_crm.common.claims import claim_name, claims_for
from airflow_provider_crm.common.errors import CrmNotFoundError, CrmPermissionError
from airflow_provider_crm.common.writes import create_once


def create_card_once(client: PipefyClient, pipe_id: str | int, key: dict[str, Any], key_value: Any, *,
                     searched: bool, create: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The card of ``pipe_id`` whose ``key`` field holds ``key_value``, created at most once whoever else
    writes the same key at the same time (under the key's claim, common/writes.py ``create_once``).

    :param searched: the caller has just searched (findCards) and found nothing: search again only
        when a claim mark says a create of this key may have landed since.
    """

    def holds_key(card: dict[str, Any]) -> bool:
        return any(item["field"]["id"] == key["id"] and same_value(key, machine_value(item), key_value)
                   for item in card.get("fields") or [])

    def recorded(card_id: str) -> dict[str, Any] | None:
        try:
            card = client.get_card(card_id)
        except (CrmNotFoundError, CrmPermissionError):  # deleted cards answer PERMISSION_DENIED
            return None
        return card if holds_key(card) and str((card.get("pipe") or {}).get("id")) == str(pipe_id) else None

    def find(suspect: bool) -> dict[str, Any] | None:
        if searched and not suspect:  # nothing a moment ago, and no writer has marked the key since
            return None
        found = client.find_cards(pipe_id, key["id"], key_value)
        return found[0] if found else None

    name = claim_name("pipefy", client.settings.api_url, pipe_id, key["id"], key_value)
    return create_once(claims_for(client.limiter.store), name, recorded=recorded, find=find, create=create,
                       ident=lambda card: card["id"])


def create_card_keyed(client: PipefyClient, pipe_id: str | int, *, title: str | None, fields: dict[str, Any],
                      phase_id: str | int | None, key_field: str | None) -> tuple[dict[str, Any], bool]:
    """Create a card; with ``key_field``, the card holding the key's value if one exists (returns the card
    and whether it was created). An Airflow retry after a create that landed finds that card, and under
    the key's claim a try overlapping this one (a zombie) cannot create it either."""

    def create() -> dict[str, Any]:
        return client.create_card(pipe_id, title=title, fields=fields, phase_id=phase_id, key_field=key_field)

    if not key_field:
        card, created = create(), True
    else:
        key, value = client.key_value(client.pipe_fields(pipe_id), fields, key_field, f"pipe {pipe_id}")
        card, created = create_card_once(client, pipe_id, key, value, searched=False, create=create)
        if not created:
            client.log.info("Card %s already has %s = %r: not creating another", card["id"], key["label"], value)
    if created:
        client.log.info("Created card %s in pipe %s", card["id"], pipe_id)
    return card, created


def create_record_keyed(client: PipefyClient, table_id: str | int, *, title: str | None, fields: dict[str, Any],
                        key_field: str | None) -> tuple[dict[str, Any], bool]:
    """Create a table record; with ``key_field``, the record holding the key's value if one exists
    (returns the record and whether it was created)."""
    if key_field:
        meta = client.get_table(table_id)["table_fields"]
        key, value = client.key_value(meta, fields, key_field, f"table {table_id}")
        found = client.find_table_records(table_id, key["id"], value)
        if found:
            client.log.info("Record %s already has %s = %r: not creating another", found[0]["id"], key_field, value)
            return found[0], False
    record = client.create_table_record(table_id, title=title, fields=fields, key_field=key_field)
    client.log.info("Created record %s in table %s", record["id"], table_id)
    return record, True
