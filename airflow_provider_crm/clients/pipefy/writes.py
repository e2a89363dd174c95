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
