"""How an upsert row becomes a Pipedrive record: its key normalised, found in an index or by a search
under the key's claim, compared, created at most once, updated. common/upsert_loop.py runs the loop
(concurrently, never two rows of one key)."""

from __future__ import annotations

from typing import Any

from airflow_provider_crm.clients.pipedrive.client import PipedriveClient
from airflow_provider_crm.clients.pipedrive.entities import entity_info
from airflow_provider_crm.clients.pipedrive.fields import match_key, normalise_key, record_keys
from airflow_provider_crm.common.claims import claim_name, claims_for
from airflow_provider_crm.common.errors import CrmInputError, CrmNotFoundError
from airflow_provider_crm.common.upsert_loop import PreparedRow
from airflow_provider_crm.common.writes import create_once


def create_keyed(client: PipedriveClient, base_url: str, entity: str, key_field: str, key_value: Any,
                 data: dict[str, Any], *, trust_absent: bool) -> tuple[dict[str, Any], bool]:
    """The record whose ``key_field`` is ``key_value``, created from ``data`` at most once, whoever else
    writes the same key at the same time (common/writes.py ``create_once``).

    :param trust_absent: the caller's own list (an upsert's index) already says no record has the key,
        so a search is made only when a claim mark says a create of this key may have landed since.
    """
    fmap = client.field_map(entity)

    def recorded(record_id: str) -> dict[str, Any] | None:
        try:
            record = client.get(entity, int(record_id) if entity_info(entity).id_type is int else record_id)
        except (CrmNotFoundError, ValueError):
            return None
        if record.get("is_deleted") or match_key(key_value) not in record_keys(record, key_field, fmap):
            return None
        return record

    def find(suspect: bool) -> dict[str, Any] | None:
        if trust_absent and not suspect:
            return None
        return client.find_one(entity, key_field, key_value)

    name = claim_name("pipedrive", base_url, entity, key_field.lower(), match_key(key_value))
    return create_once(claims_for(client.transport.limiter.store), name, recorded=recorded, find=find,
                       create=lambda: client.create(entity, data, key_field=key_field, key_value=key_value),
                       ident=lambda record: record["id"])


class PipedriveUpsertSteps:
    """How a Pipedrive row is found, compared, created and updated (common/upsert_loop.py runs the loop).

    :param index: records by key (``lookup="index"``), kept current as rows are written; None: each new
        key is searched for under its claim.
    """

    def __init__(self, client: PipedriveClient, base_url: str, entity: str, key_field: str,
                 index: dict[str, dict[str, Any]] | None) -> None:
        self.client = client
        self.base_url = base_url
        self.entity = entity
        self.key_field = key_field
        self.index = index

    def prepare(self, row: dict[str, Any]) -> PreparedRow:
        # the key as Pipedrive keeps it (emails lower-cased, text trimmed), once: the lookup, the index,
        # the create's own lookup and the record written all use this value
        key_value = normalise_key(self.key_field, _key_value(row.get(self.key_field)))
        if key_value in (None, ""):
            raise CrmInputError(f"key field {self.key_field!r} is empty")
        data = {k: v for k, v in row.items() if v is not None}
        if isinstance(data.get(self.key_field), str):
            data[self.key_field] = key_value
        if self.entity == "persons" and isinstance(data.get("email"), str):
            data["emails"] = [{"value": data.pop("email"), "primary": True, "label": "work"}]
        if self.entity == "persons" and isinstance(data.get("phone"), str):
            data["phones"] = [{"value": data.pop("phone"), "primary": True, "label": "work"}]
        body = self.client.encode_record(self.entity, data)  # validates names before any write
        return PreparedRow(match_key(key_value), (key_value, data, body))

    def find(self, row: PreparedRow) -> dict[str, Any] | None:
        return self.index.get(str(row.key)) if self.index is not None else None

    def create(self, row: PreparedRow) -> tuple[dict[str, Any], bool]:
        # Under the key's claim (shared with every process using this store): the record another
        # writer created meanwhile, else a fresh search (search lookup), else a create.
        key_value, data, _ = row.payload
        record, created = create_keyed(self.client, self.base_url, self.entity, self.key_field, key_value, data,
                                       trust_absent=self.index is not None)
        self._remember(record, row)
        return record, created

    def changes(self, record: dict[str, Any], row: PreparedRow) -> bool:
        return not _unchanged(record, row.payload[2])

    def update(self, record: dict[str, Any], changes: Any, row: PreparedRow) -> None:
        updated = self.client.update(self.entity, record["id"], row.payload[1])
        self._remember(updated if isinstance(updated, dict) and updated.get("id") else record, row)

    def finish(self, record: dict[str, Any], row: PreparedRow, created: bool) -> None:
        return None

    def ident(self, record: dict[str, Any]) -> Any:
        return record["id"]

    def _remember(self, record: dict[str, Any], row: PreparedRow) -> None:
        """Keep the index current, so a later row with the same key updates instead of creating."""
        if self.index is not None:
            self.index[str(row.key)] = record


def _unchanged(existing: dict[str, Any], body: dict[str, Any]) -> bool:
    for key, value in body.items():
        if key == "custom_fields":
            current = existing.get("custom_fields") or {}
            if any(current.get(k) != v for k, v in value.items()):
                return False
        elif key in ("emails", "phones"):
            have = {str(e.get("value")).lower() for e in existing.get(key) or []}
            if not {str(e.get("value")).lower() for e in value} <= have:
                return False
        elif existing.get(key) != value:
            return False
    return True


def _key_value(value: Any) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value[0].get("value")
    return value
