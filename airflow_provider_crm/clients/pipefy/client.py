"""Pipefy's API as methods: :class:`PipefyClient` (sync: metadata, cards, tables, records,
attachments) and :class:`PipefyAsyncClient` (what the triggers poll). No Airflow in here: the hook
hands over the connection's settings, the limiter and Airflow's secret masking."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlparse

import requests
from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from graphql import DocumentNode

from airflow_provider_crm.clients.pipefy import documents as doc
from airflow_provider_crm.clients.pipefy import pagination
from airflow_provider_crm.clients.pipefy.base import UPDATE_FIELDS_BATCH, PipefyRequests, iso
from airflow_provider_crm.clients.pipefy.errors import named_error
from airflow_provider_crm.clients.pipefy.policy import pipefy_policy
from airflow_provider_crm.clients.pipefy.settings import PipefySettings
from airflow_provider_crm.clients.pipefy.transport import PipefyAsyncTransport
from airflow_provider_crm.common.errors import (
    CrmApiError,
    CrmInputError,
    CrmNotFoundError,
    CrmTransientApiError,
    CrmValidationError,
)
from airflow_provider_crm.common.ratelimit.limiter import RateLimiter, build_limiter
from airflow_provider_crm.common.retry import acall_with_retries, call_with_retries


def build_pipefy_limiter(settings: PipefySettings) -> RateLimiter:
    """The limiter of the connection's credential (shared through its store by every process using it)."""
    policy = pipefy_policy(settings.plan, conn_id=settings.conn_id, overrides={
        "requests_per_30s": settings.requests_per_30s, "monthly_quota": settings.monthly_quota})
    return build_limiter(policy, settings.limiter_key, store=settings.rate_limit_store, conn_id=settings.conn_id)


def _found(value: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if not value:
        raise CrmNotFoundError(f"{what} not found", service="pipefy")
    return value


class PipefyClient(PipefyRequests):
    """Pipefy's GraphQL API, sync (see :class:`PipefyRequests` for the parameters)."""

    # -- metadata ----------------------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        return self.execute(doc.ME, description="me")["me"]

    def _cached(self, kind: str, ident: str | int, document: DocumentNode) -> dict[str, Any]:
        cache_key = (kind, str(ident))
        if cache_key not in self._metadata:
            data = self.execute(document, {"id": str(ident)}, description=f"{kind} {ident}")
            self._metadata[cache_key] = _found(data.get(kind), f"{kind} {ident}")
        return self._metadata[cache_key]

    def get_pipe(self, pipe_id: str | int) -> dict[str, Any]:
        """A pipe with its phases, their fields, labels and start-form fields (cached per client)."""
        return self._cached("pipe", pipe_id, doc.PIPE)

    def get_phase(self, phase_id: str | int) -> dict[str, Any]:
        data = self.execute(doc.PHASE, {"id": str(phase_id)}, description=f"phase {phase_id}")
        return _found(data.get("phase"), f"phase {phase_id}")

    def pipe_fields(self, pipe_id: str | int) -> list[dict[str, Any]]:
        pipe = self.get_pipe(pipe_id)
        fields = list(pipe.get("start_form_fields") or [])
        for phase in pipe.get("phases") or []:
            fields.extend(phase.get("fields") or [])
        return fields

    def resolve_phase(self, pipe_id: str | int, phase: str | int) -> dict[str, Any]:
        phases = self.get_pipe(pipe_id).get("phases") or []
        for item in phases:
            if str(phase) == str(item["id"]) or str(phase).lower() == str(item["name"]).lower():
                return item
        raise CrmInputError(f"pipe {pipe_id}: unknown phase {phase!r}; phases: {', '.join(p['name'] for p in phases)}")

    # -- cards -------------------------------------------------------------------------------------
    def get_card(self, card_id: str | int) -> dict[str, Any]:
        data = self.execute(doc.CARD, {"id": str(card_id)}, description=f"card {card_id}")
        return _found(data.get("card"), f"card {card_id}")

    def iter_pipe_cards(self, pipe_id: str | int, updated_from: datetime | None = None,
                        updated_to: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Cards of a pipe (allCards), optionally those updated in [updated_from, updated_to)."""
        conditions = []
        if updated_from is not None:
            conditions.append({"field": "updated_at", "operator": "gte", "value": iso(updated_from)})
        if updated_to is not None:
            conditions.append({"field": "updated_at", "operator": "lt", "value": iso(updated_to)})
        variables: dict[str, Any] = {"pipeId": str(pipe_id)}
        if conditions:
            variables["filter"] = {**conditions[0], "AND": conditions[1:]} if len(conditions) > 1 else conditions[0]
        yield from self.paginate(doc.ALL_CARDS, variables, ["allCards"])

    def iter_phase_cards(self, phase_id: str | int) -> Iterator[dict[str, Any]]:
        yield from self.paginate(doc.PHASE_CARDS, {"id": str(phase_id)}, ["phase", "cards"])

    def find_cards(self, pipe_id: str | int, field_id: str, value: Any) -> list[dict[str, Any]]:
        """Cards whose field equals ``value`` exactly (Pipefy's findCards is case-sensitive)."""
        search = {"fieldId": field_id, "fieldValue": str(value)}
        return list(self.paginate(doc.FIND_CARDS, {"pipeId": str(pipe_id), "search": search}, ["findCards"]))

    def create_card(self, pipe_id: str | int, title: str | None = None, fields: dict[str, Any] | None = None,
                    phase_id: str | int | None = None, key_field: str | None = None,
                    **card_attributes: Any) -> dict[str, Any]:
        """Create a card. With ``key_field`` (id or label), a create whose answer was lost is looked up
        by that field's value instead of being sent again, so nothing is created twice."""
        fields = dict(fields or {})
        meta = self.pipe_fields(pipe_id)
        attributes = [{"field_id": i, "field_value": v} for i, v in self.converted(meta, fields, f"pipe {pipe_id}")]
        card_input: dict[str, Any] = {"pipe_id": str(pipe_id), "fields_attributes": attributes, **card_attributes}
        if title is not None:
            card_input["title"] = title
        if phase_id is not None:
            card_input["phase_id"] = str(phase_id)
        lookup = self.key_lookup(meta, fields, key_field, f"pipe {pipe_id}",
                                 lambda field_id, value: self.find_cards(pipe_id, field_id, value))
        return self.create(lambda: self.post_once(doc.CREATE_CARD, {"input": card_input}, "write")["createCard"]["card"],
                           lookup, f"createCard in pipe {pipe_id}")

    def update_card(self, card_id: str | int, *, pipe_id: str | int | None = None,
                    fields: dict[str, Any] | None = None, **card_attributes: Any) -> dict[str, Any]:
        """Update card-level attributes (updateCard) and custom fields (updateFieldsValues, 30 per call)."""
        result: dict[str, Any] = {"id": str(card_id)}
        if card_attributes:
            data = self.execute(doc.UPDATE_CARD, {"input": {"id": str(card_id), **card_attributes}}, write=True,
                                description=f"updateCard {card_id}")
            result.update(data["updateCard"]["card"])
        if fields:
            if pipe_id is None:
                pipe_id = self.get_card(card_id)["pipe"]["id"]
            values = self.converted(self.pipe_fields(pipe_id), fields, f"card {card_id}")
            self.update_fields_values(card_id, values, f"card {card_id}")
        return result

    def update_fields_values(self, node_id: str | int, values: list[tuple[str, Any]], what: str) -> None:
        """Set a card's or a table record's fields (``(field id, value)``), 30 a call (updateFieldsValues)."""
        for start in range(0, len(values), UPDATE_FIELDS_BATCH):
            # NodeFieldValueInput.value is a list (api-notes, "Checked against public evidence")
            batch = [{"fieldId": i, "value": v if v is None or isinstance(v, list) else [v]}
                     for i, v in values[start : start + UPDATE_FIELDS_BATCH]]
            data = self.execute(doc.UPDATE_FIELDS_VALUES, {"input": {"nodeId": str(node_id), "values": batch}},
                                write=True, description=f"updateFieldsValues {node_id}")
            outcome = data["updateFieldsValues"]
            if not outcome.get("success"):
                raise CrmValidationError(f"{what}: fields not updated: {user_errors(outcome)}", service="pipefy")

    def move_card(self, card_id: str | int, phase_id: str | int) -> dict[str, Any]:
        """Move a card to a phase. Moving twice is refused ("already in phase"), so a repeat (after a lost
        answer) first reads where the card is, and a refusal is checked the same way: a card already in
        the phase (moved by the attempt whose answer was lost, or by another writer) is a success."""
        description = f"move card {card_id}"
        move_input = {"input": {"card_id": str(card_id), "destination_phase_id": str(phase_id)}}
        sent = False

        def already_there() -> dict[str, Any] | None:
            card = self.get_card(card_id)
            return card if str((card.get("current_phase") or {}).get("id")) == str(phase_id) else None

        def attempt() -> dict[str, Any]:
            nonlocal sent
            if sent:
                card = already_there()
                if card is not None:
                    self.log.info("Card %s is already in phase %s: the earlier move landed", card_id, phase_id)
                    return card
            sent = True
            return self.post_once(doc.MOVE_CARD, move_input, "write")["moveCardToPhase"]["card"]

        try:
            return call_with_retries(attempt, idempotent=True, description=description, stats=self.limiter.stats)
        except CrmValidationError as err:
            card = already_there()
            if card is not None:
                self.log.info("Card %s is already in phase %s (%s)", card_id, phase_id, err.api_message)
                return card
            raise CrmValidationError(
                f"card {card_id} cannot move to phase {phase_id}: {err.api_message}", service="pipefy",
                code=err.code, correlation_id=err.correlation_id,
            ) from None
        except CrmApiError as err:
            raise named_error(err, description) from None

    def delete_card(self, card_id: str | int) -> bool:
        data = self.execute(doc.DELETE_CARD, {"input": {"id": str(card_id)}}, write=True,
                            description=f"delete card {card_id}")
        return bool((data.get("deleteCard") or {}).get("success"))

    def create_comment(self, card_id: str | int, text: str) -> dict[str, Any]:
        """Comment on a card. No way to look a comment up: sent again only when refused before it ran."""
        comment_input = {"input": {"card_id": str(card_id), "text": text}}
        data = self.create(lambda: self.post_once(doc.CREATE_COMMENT, comment_input, "write"), None,
                           f"createComment on card {card_id}")
        return data["createComment"]["comment"]

    # -- tables ------------------------------------------------------------------------------------
    def get_table(self, table_id: str | int) -> dict[str, Any]:
        return self._cached("table", table_id, doc.TABLE)

    def iter_table_records(self, table_id: str | int) -> Iterator[dict[str, Any]]:
        yield from self.paginate(doc.TABLE_RECORDS, {"id": str(table_id)}, ["table_records"])

    def find_table_records(self, table_id: str | int, field_id: str, value: Any) -> list[dict[str, Any]]:
        """Records whose field equals ``value`` exactly (findRecords)."""
        variables = {"tableId": str(table_id), "fieldId": str(field_id), "fieldValue": str(value)}
        return list(self.paginate(doc.FIND_RECORDS, variables, ["findRecords"]))

    def create_table_record(self, table_id: str | int, title: str | None = None,
                            fields: dict[str, Any] | None = None, key_field: str | None = None) -> dict[str, Any]:
        """Create a database-table record. With ``key_field`` (id or label, its value in ``fields``), a
        create whose answer was lost is looked up (findRecords) instead of being sent again."""
        fields = dict(fields or {})
        meta = self.get_table(table_id)["table_fields"]
        attributes = [{"field_id": i, "field_value": v} for i, v in self.converted(meta, fields, f"table {table_id}")]
        record_input: dict[str, Any] = {"table_id": str(table_id), "fields_attributes": attributes}
        if title is not None:
            record_input["title"] = title
        lookup = self.key_lookup(meta, fields, key_field, f"table {table_id}",
                                 lambda field_id, value: self.find_table_records(table_id, field_id, value))
        def send() -> dict[str, Any]:
            return self.post_once(doc.CREATE_TABLE_RECORD, {"input": record_input}, "write")["createTableRecord"][
                "table_record"]

        return self.create(send, lookup, f"createTableRecord in table {table_id}")

    def update_table_record(self, record_id: str | int, *, table_id: str | int | None = None,
                            fields: dict[str, Any] | None = None, **attributes: Any) -> dict[str, Any]:
        """Update a record's attributes (updateTableRecord) and fields (updateFieldsValues, 30 a call)."""
        if attributes:
            self.execute(doc.UPDATE_TABLE_RECORD, {"input": {"id": str(record_id), **attributes}}, write=True,
                         description=f"updateTableRecord {record_id}")
        if fields:
            if table_id is None:
                raise CrmInputError(f"record {record_id}: pass table_id to update fields by label")
            values = self.converted(self.get_table(table_id)["table_fields"], fields, f"table {table_id}")
            self.update_fields_values(record_id, values, f"record {record_id}")
        return {"id": str(record_id)}

    def set_table_record_field_value(self, record_id: str | int, field_id: str, value: Any) -> None:
        self.execute(doc.SET_TABLE_RECORD_FIELD,
                     {"input": {"table_record_id": str(record_id), "field_id": field_id, "value": value}},
                     write=True, description=f"setTableRecordFieldValue {record_id}")

    def upload_attachment(self, organization_id: str, file_name: str, content: bytes,
                          content_type: str = "application/octet-stream") -> str:
        """Upload bytes through a presigned URL; returns the storage path to put in an attachment field."""
        data = self.execute(doc.CREATE_PRESIGNED_URL, {
            "organizationId": organization_id, "fileName": file_name, "contentType": content_type,
            "contentLength": len(content)}, write=True, description=f"presigned URL for {file_name}")
        url = data["createPresignedUrl"]["url"]
        try:  # the file store's URL, not Pipefy's API: a plain PUT
            resp = self.transport.session.put(url, data=content, headers={"Content-Type": content_type},
                                              timeout=self.timeout)
        except requests.RequestException as err:
            raise CrmTransientApiError(f"upload of {file_name} failed ({type(err).__name__})",
                                       service="pipefy") from None
        if resp.status_code >= 400:
            raise CrmTransientApiError(f"upload of {file_name} refused (HTTP {resp.status_code})", service="pipefy",
                                       status=resp.status_code)
        # the field value is the URL-decoded storage path "orgs/<uuid>/uploads/<uuid>/<name>": a name with
        # spaces or accents is percent-encoded in the URL (api-notes, "Checked against public evidence")
        path = unquote(urlparse(url).path)
        return path[path.index("orgs/"):] if "orgs/" in path else path.lstrip("/")

    def delete_table_record(self, record_id: str | int) -> bool:
        data = self.execute(doc.DELETE_TABLE_RECORD, {"input": {"id": str(record_id)}}, write=True,
                            description=f"delete record {record_id}")
        return bool((data.get("deleteTableRecord") or {}).get("success"))


def user_errors(outcome: dict[str, Any]) -> str:
    """``userErrors`` as text; ``field`` is a list of names on Pipefy (a string in older answers)."""
    def field(error: dict[str, Any]) -> str:
        value = error.get("field")
        return ".".join(map(str, value)) if isinstance(value, list) else str(value)

    return "; ".join(f"{field(e)}: {e.get('message')}" for e in outcome.get("userErrors") or [])


class PipefyAsyncClient:
    """Pipefy's API for triggers: awaited throughout (gql's async session over
    :class:`PipefyAsyncTransport`), retried and its errors named as the sync client's are."""

    def __init__(self, settings: PipefySettings, limiter: RateLimiter, timeout: float = 60.0,
                 on_secret: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.limiter = limiter
        self.transport = PipefyAsyncTransport(settings, limiter, timeout, on_secret)
        self._client = Client(transport=self.transport, execute_timeout=None)
        self._session: AsyncClientSession | None = None

    async def _post_once(self, document: DocumentNode, variables: dict[str, Any] | None) -> dict[str, Any]:
        if self._session is None:  # no connection is held: each request opens its own (transport.py)
            session = await self._client.connect_async()
            assert isinstance(session, AsyncClientSession)
            self._session = session
        return await self._session.execute(GraphQLRequest(document, variable_values=variables or {}))

    async def aexecute(self, document: DocumentNode, variables: dict[str, Any] | None = None,
                       description: str = "pipefy request") -> dict[str, Any]:
        """Run a (read) document, retried in place on transient failures as the sync client's reads are."""
        try:
            return await acall_with_retries(lambda: self._post_once(document, variables), idempotent=True,
                                            description=description, stats=self.limiter.stats)
        except CrmApiError as err:
            raise named_error(err, description) from None

    async def aget_card(self, card_id: str | int) -> dict[str, Any]:
        data = await self.aexecute(doc.CARD, {"id": str(card_id)}, f"card {card_id}")
        return _found(data.get("card"), f"card {card_id}")

    async def aphase_cards(self, phase_id: str | int, limit: int = 500) -> list[dict[str, Any]]:
        """Up to ``limit`` cards of a phase, page by page (a page may be short: only pageInfo ends it)."""
        cards: list[dict[str, Any]] = []
        after = None
        while len(cards) < limit:
            variables = {"id": str(phase_id), "first": self.settings.page_size, "after": after}
            data = await self.aexecute(doc.PHASE_CARDS, variables, f"cards of phase {phase_id}")
            connection = (data.get("phase") or {}).get("cards") or {}
            cards += pagination.nodes(connection)
            after = pagination.next_cursor(connection)
            if after is None:
                break
        return cards


async def build_async_client(settings: PipefySettings, timeout: float = 60.0,
                             on_secret: Callable[[str], None] | None = None) -> PipefyAsyncClient:
    """An async client; the limiter is built in a thread (opening the file store is I/O)."""
    limiter = await asyncio.to_thread(build_pipefy_limiter, settings)
    return PipefyAsyncClient(settings, limiter, timeout, on_secret)
