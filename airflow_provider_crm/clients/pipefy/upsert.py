"""How an upsert row becomes a Pipefy card: found by its key field (findCards, or an index of the pipe,
lookup.py), compared, created (once per key), updated, moved to a phase. common/upsert_loop.py runs the
loop (concurrently, never two rows of one key)."""

from __future__ import annotations

from typing import Any

from airflow_provider_crm.clients.pipefy.client import PipefyClient
from airflow_provider_crm.clients.pipefy.lookup import CardIndex
from airflow_provider_crm.clients.pipefy.values import machine_value, resolve_field, same_value, written_item
from airflow_provider_crm.clients.pipefy.writes import create_card_once
from airflow_provider_crm.common.errors import CrmInputError
from airflow_provider_crm.common.upsert_loop import PreparedRow


class PipefyUpsertSteps:
    """How a row becomes a card: found by its key field, compared, created, updated, moved to ``target``
    (common/upsert_loop.py runs the loop).

    :param index: the pipe's cards by key (``lookup="index"``), kept current as rows are written; None:
        one findCards per row. Either way a key held by several cards updates the first one listed.
    """

    def __init__(self, client: PipefyClient, pipe_id: str | int, key: dict[str, Any], key_column: str,
                 meta: list[dict[str, Any]], target: dict[str, Any] | None, *, field_map: dict[str, str],
                 title_column: str | None, index: CardIndex | None = None) -> None:
        self.client = client
        self.pipe_id = pipe_id
        self.key, self.key_column, self.meta, self.target = key, key_column, meta, target
        self.field_map = field_map
        self.title_column = title_column
        self.index = index

    def is_field(self, column: str) -> bool:
        """Whether a column (the title column) also names a field: then it is written to both."""
        try:
            resolve_field(self.meta, self.field_map.get(column, column), f"pipe {self.pipe_id}")
        except CrmInputError:
            return False
        return True

    def prepare(self, row: dict[str, Any]) -> Any:
        if row.get(self.key_column) in (None, ""):
            raise CrmInputError(f"key column {self.key_column!r} is empty")
        values = {self.field_map.get(col, col): val for col, val in row.items()
                  if val is not None and (col != self.title_column or self.is_field(col))}
        for name in values:
            resolve_field(self.meta, name, f"pipe {self.pipe_id}")  # unknown columns fail the row, named
        key_value = self.client.value(self.key, row[self.key_column])
        title = row.get(self.title_column) if self.title_column else None
        return PreparedRow(repr(key_value), (key_value, values, title))

    def find(self, row: Any) -> dict[str, Any] | None:
        wanted = str(row.payload[0])  # what find_cards sends as fieldValue
        found = self.index.find(wanted) if self.index is not None else self.client.find_cards(
            self.pipe_id, self.key["id"], wanted)
        if len(found) > 1:
            self.client.log.warning("%s = %r is held by %d cards (%s): updating the first", self.key["label"],
                                    wanted, len(found), ", ".join(str(card["id"]) for card in found))
        return found[0] if found else None

    def create(self, row: Any) -> tuple[dict[str, Any], bool]:
        # under the key's claim (shared by every process using this store), so two upserts of the
        # same rows at once create each card once
        key_value, values, title = row.payload
        key_field = self.field_map.get(self.key_column, self.key_column)
        card, created = create_card_once(
            self.client, self.pipe_id, self.key, key_value, searched=True,
            create=lambda: self.client.create_card(self.pipe_id, title=title, fields=values, key_field=key_field))
        if self.index is not None:  # a later row of this key updates this card rather than create another
            if "fields" not in card:  # the create's answer (id, title): as written
                card = {**card, "fields": self.written(values)}
            self.index.add(card, wanted=str(key_value))
        return card, created

    def written(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Card field items as writing ``values`` leaves them (what the index keeps)."""
        return [written_item(field, self.client.value(field, value)) for field, value in
                ((resolve_field(self.meta, name, f"pipe {self.pipe_id}"), value) for name, value in values.items())]

    def changes(self, card: dict[str, Any], row: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        _, values, title = row.payload
        current = {item["field"]["id"]: item for item in card.get("fields") or []}
        changed = {}
        for name, value in values.items():
            field = resolve_field(self.meta, name, f"pipe {self.pipe_id}")
            have = current.get(field["id"])
            if not same_value(field, machine_value(have) if have else None, self.client.value(field, value)):
                changed[name] = value
        attrs = {"title": title} if title and title != card.get("title") else {}
        return (changed, attrs) if changed or attrs else None

    def update(self, card: dict[str, Any], changes: tuple[dict[str, Any], dict[str, Any]], row: Any) -> None:
        changed, attrs = changes
        self.client.update_card(card["id"], pipe_id=self.pipe_id, fields=changed, **attrs)
        if self.index is not None:
            self.index.patch(card, self.written(changed), title=attrs.get("title"))

    def finish(self, card: dict[str, Any], row: Any, created: bool) -> None:
        if self.target is None:
            return
        phase_now = (card.get("current_phase") or {}).get("id")
        if phase_now is None and created:
            phase_now = self.client.get_card(card["id"])["current_phase"]["id"]
        if str(phase_now) != str(self.target["id"]):
            self.client.move_card(card["id"], self.target["id"])
        if self.index is not None:
            self.index.patch(card, [], phase={"id": self.target["id"], "name": self.target.get("name")})

    def ident(self, card: dict[str, Any]) -> str:
        return str(card["id"])
