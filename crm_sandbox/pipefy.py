"""Emulated Pipefy GraphQL API: graphql-core over an SDL schema with Pipefy's names.

Routes (mounted under ``/pipefy``):

- ``POST /graphql``: JSON body ``{"query", "variables", "operationName"}``; ``Authorization: Bearer <token>``.
- ``POST /oauth/token``: service-account client credentials (form, JSON or HTTP Basic).
- ``GET /_state``: the whole data set as JSON, no auth (for tests).
- ``POST /_service_accounts``: register a client ``{"client_id", "client_secret", "plan", "expires_in"}``.
- ``PUT|GET /_uploads/{key}``: where ``createPresignedUrl`` points.

Limits per token: a sliding window (500 requests / 30 s), over it HTTP 429 and a block (5 minutes)
during which every request answers 429; a monthly call quota by plan. Errors come back in Pipefy's
shape: HTTP 200 with ``errors[].extensions.code`` and ``correlation_id`` and partial ``data``.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

from graphql import (
    DocumentNode,
    Executor,
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    Visitor,
    build_schema,
    execute_sync,
    parse,
    validate,
    visit,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crm_sandbox.core import (
    DEFAULT_PIPEFY_CLIENT,
    FastJSONResponse,
    SandboxState,
    SlidingWindow,
    token_key,
)
from crm_sandbox.pipefy_data import (
    LIST_TYPES,
    REQUIRED_MESSAGE,
    SERVICE_ACCOUNT_USER,
    PipefyData,
    PipefyFault,
    iso,
)

log = logging.getLogger(__name__)

MONTHLY_QUOTA: dict[str, int | None] = {"starter": 20, "business": 500, "enterprise": 10_000, "unlimited": None}
# `first`/`last` above the cap are capped silently. 50 is Pipefy's documented page size; whether larger
# pages are honoured or clamped is unconfirmed (api-notes, "Checked against public evidence": its MCP
# server asks up to 500 for phase cards), so the cap is an option (--pipefy-max-page,
# CRM_SANDBOX_PIPEFY_MAX_PAGE): 50 by default, more to grant larger pages.
MAX_PAGE = 50
MAX_FIELDS_VALUES = 30  # updateFieldsValues takes at most 30 values
UPLOAD_MAX_BYTES = 512 * 1024 * 1024
UPLOAD_URL_SECONDS = 15 * 60  # presigned links expire after 15 minutes

SCHEMA = build_schema(
    resources.files("crm_sandbox").joinpath("pipefy_schema.graphql").read_text()
)
SCHEMA.get_type("Node").resolve_type = lambda value, info, abstract: value.typename  # type: ignore[union-attr]
SCHEMA.get_type("UpdatedNode").resolve_type = lambda value, info, abstract: value.typename  # type: ignore[union-attr]


# -- relay pagination ------------------------------------------------------------------------------
def encode_cursor(item_id: int) -> str:
    """An opaque cursor: base64 of a JSON array (like Pipefy's), keyed by id so pages never shift."""
    return base64.b64encode(json.dumps([item_id]).encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        value = json.loads(base64.b64decode(cursor, validate=True))
        return int(value[0])
    except (ValueError, TypeError, IndexError, KeyError, binascii.Error):
        raise PipefyFault(f"Invalid cursor: {cursor}", "INVALID_INPUT") from None


def paginate(ids: list[int], build: Callable[[int], Any], first: int | None = None, after: str | None = None,
             last: int | None = None, before: str | None = None, cap: int = MAX_PAGE) -> dict[str, Any]:
    """A Relay connection over ids sorted ascending; at most ``cap`` edges (see :data:`MAX_PAGE`)."""
    for name, value in (("first", first), ("last", last)):
        if value is not None and value < 0:
            raise PipefyFault(f"Argument '{name}' must be a non-negative integer, got {value}", "INVALID_INPUT")
    start = bisect.bisect_right(ids, decode_cursor(after)) if after else 0
    end = bisect.bisect_left(ids, decode_cursor(before)) if before else len(ids)
    end = max(start, end)
    if first is None and last is not None:
        lo, hi = max(start, end - min(last, cap)), end
    else:
        lo, hi = start, min(end, start + min(cap if first is None else first, cap))
    page = ids[lo:hi]
    edges = [{"cursor": encode_cursor(i), "node": build(i)} for i in page]
    return {
        "pageInfo": {"hasNextPage": hi < end if last is None or first is not None else end < len(ids),
                     "hasPreviousPage": lo > start if first is None and last is not None else start > 0,
                     "startCursor": edges[0]["cursor"] if edges else None,
                     "endCursor": edges[-1]["cursor"] if edges else None},
        "edges": edges,
        "totalCount": len(ids),
    }


# -- filters ---------------------------------------------------------------------------------------
_TIME_FIELDS = {"updated_at": "updated_at", "createdAt": "createdAt", "created_at": "createdAt",
                "finished_at": "finished_at"}


def _parse_time(value: Any) -> float:
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise PipefyFault(f"Invalid date in filter: {value!r} (use ISO 8601)", "INVALID_INPUT") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _compare(left: Any, op: str, right: Any) -> bool:
    if left is None or right is None:
        return False
    try:
        if op == "equal":
            return bool(left == right)
        if op == "gt":
            return bool(left > right)
        if op == "gte":
            return bool(left >= right)
        if op == "lt":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


def compile_filter(condition: dict[str, Any] | None, fields: dict[str, dict[str, Any]]) -> Callable[[dict], bool]:
    """allCards' AdvancedSearch as a predicate: the node's own condition AND all of ``AND`` AND any of ``OR``."""
    if not condition:
        return lambda card: True
    checks: list[Callable[[dict], bool]] = []
    name = condition.get("field")
    if name:
        op = condition.get("operator") or "equal"
        raw = condition.get("value")
        if name in _TIME_FIELDS:
            key, wanted = _TIME_FIELDS[name], _parse_time(raw)
            # second precision, as the API prints timestamps
            checks.append(lambda c: c[key] is not None and _compare(int(c[key]), op, wanted))
        elif name == "title":
            checks.append(lambda c: _compare(c["title"], op, raw))
        elif name in ("current_phase", "phase_id"):
            checks.append(lambda c: _compare(c["phase_id"], op, str(raw)))
        elif name in fields:
            ftype = fields[name]["type"]

            def by_field(c: dict[str, Any], fid: str = name) -> bool:
                stored = c["values"].get(fid)
                if isinstance(stored, float):
                    try:
                        return _compare(stored, op, float(str(raw)))
                    except ValueError:
                        return False
                if isinstance(stored, list):
                    return op == "equal" and str(raw) in stored
                return _compare(stored, op, raw)

            checks.append(by_field)
            del ftype
        else:
            raise PipefyFault(f"Unknown filter field: {name!r}", "INVALID_INPUT")
    ands = [compile_filter(sub, fields) for sub in condition.get("AND") or []]
    ors = [compile_filter(sub, fields) for sub in condition.get("OR") or []]
    return lambda c: all(ch(c) for ch in checks) and all(a(c) for a in ands) and (not ors or any(o(c) for o in ors))


# -- graph nodes (graphql-core's default resolver reads attributes and calls methods) ---------------
class Ctx:
    """What resolvers of one request share: the data, the caller and the request time."""

    def __init__(self, service: PipefyService, principal: str, is_pat: bool) -> None:
        self.service = service
        self.d: PipefyData = service.data
        self.principal = principal
        self.is_pat = is_pat
        self.now = service.state.clock.now()
        self.max_page = service.state.config.pipefy_max_page

    def page(self, ids: list[int], build: Callable[[int], Any], page: dict[str, Any]) -> dict[str, Any]:
        """A connection over ``ids`` under the configured page cap."""
        return paginate(ids, build, cap=self.max_page, **page)

    def pipe(self, pipe_id: Any) -> dict[str, Any]:
        pipe = self.d.pipes.get(str(pipe_id))
        if pipe is None:
            raise PipefyFault(f"Pipe not found with id: {pipe_id}", "RESOURCE_NOT_FOUND")
        if pipe.get("private") and not self.is_pat:
            raise PipefyFault("Permission denied", "PERMISSION_DENIED")
        return pipe

    def card(self, card_id: Any) -> dict[str, Any]:
        card = self.d.cards.get(str(card_id))
        if card is None or (self.d.pipes[card["pipe_id"]].get("private") and not self.is_pat):
            # the real API answers PERMISSION_DENIED for deleted, unknown or invisible cards
            raise PipefyFault("Permission denied", "PERMISSION_DENIED")
        return card

    def table(self, table_id: Any) -> dict[str, Any]:
        table = self.d.tables.get(str(table_id))
        if table is None:
            raise PipefyFault(f"Table not found with id: {table_id}", "RESOURCE_NOT_FOUND")
        return table

    def record(self, record_id: Any) -> dict[str, Any]:
        record = self.d.records.get(str(record_id))
        if record is None:
            raise PipefyFault(f"Record not found with id: {record_id}", "RECORD_NOT_FOUND")
        return record

    def card_node(self, card_id: int) -> CardNode:
        return CardNode(self, self.d.cards[str(card_id)])

    def record_node(self, record_id: int) -> RecordNode:
        return RecordNode(self, self.d.records[str(record_id)])


class PhaseNode:
    def __init__(self, ctx: Ctx, phase: dict[str, Any]) -> None:
        self.ctx, self.p = ctx, phase
        self.id, self.name, self.done = phase["id"], phase["name"], phase["done"]

    @property
    def cards_count(self) -> int:
        return len(self.ctx.d.by_phase[self.id])

    @property
    def fields(self) -> list[dict[str, Any]]:
        return self.p["fields"]

    @property
    def cards_can_be_moved_to_phases(self) -> list[PhaseNode]:
        return [PhaseNode(self.ctx, self.ctx.d.phases[p]) for p in self.p["moves"]]

    def cards(self, info: Any, **page: Any) -> dict[str, Any]:
        return self.ctx.page(self.ctx.d.by_phase[self.id], self.ctx.card_node, page)


class PipeNode:
    def __init__(self, ctx: Ctx, pipe: dict[str, Any]) -> None:
        self.ctx, self.p = ctx, pipe
        self.id, self.uuid, self.name = pipe["id"], pipe["uuid"], pipe["name"]
        self.startFormPhaseId = pipe["startFormPhaseId"]
        self.url = f"https://app.pipefy.com/pipes/{pipe['id']}"
        self.labels = pipe["labels"]

    @property
    def phases(self) -> list[PhaseNode]:
        return [PhaseNode(self.ctx, self.ctx.d.phases[p]) for p in self.p["phase_ids"]]

    @property
    def members(self) -> list[dict[str, Any]]:
        return [{"user": self.ctx.d.users[m["user_id"]], "role_name": m["role_name"]} for m in self.p["members"]]

    @property
    def start_form_fields(self) -> list[dict[str, Any]]:
        return self.ctx.d.phases[self.startFormPhaseId]["fields"]

    @property
    def cards_count(self) -> int:
        return len(self.ctx.d.by_pipe[self.id])

    @property
    def opened_cards_count(self) -> int:
        d = self.ctx.d
        return sum(len(d.by_phase[p]) for p in self.p["phase_ids"] if not d.phases[p]["done"])


class CardNode:
    typename = "Card"

    def __init__(self, ctx: Ctx, card: dict[str, Any]) -> None:
        self.ctx, self.c = ctx, card
        self.id, self.title, self.due_date = card["id"], card["title"], card["due_date"]
        self.url = f"https://app.pipefy.com/open-cards/{card['id']}"

    @property
    def uuid(self) -> str:
        return str(uuid.UUID(int=int(self.id)))

    @property
    def current_phase(self) -> PhaseNode:
        return PhaseNode(self.ctx, self.ctx.d.phases[self.c["phase_id"]])

    @property
    def pipe(self) -> PipeNode:
        return PipeNode(self.ctx, self.ctx.d.pipes[self.c["pipe_id"]])

    @property
    def assignees(self) -> list[dict[str, Any]]:
        return [self.ctx.d.users[u] for u in self.c["assignee_ids"] if u in self.ctx.d.users]

    @property
    def labels(self) -> list[dict[str, Any]]:
        wanted = self.c["label_ids"]
        return [lb for lb in self.ctx.d.pipes[self.c["pipe_id"]]["labels"] if lb["id"] in wanted]

    @property
    def createdAt(self) -> str | None:  # noqa: N802 (Pipefy's name)
        return iso(self.c["createdAt"])

    @property
    def createdBy(self) -> dict[str, Any]:  # noqa: N802 (Pipefy's name)
        return self.ctx.d.users["901"]

    @property
    def updated_at(self) -> str | None:
        return iso(self.c["updated_at"])

    @property
    def finished_at(self) -> str | None:
        return iso(self.c["finished_at"])

    @property
    def done(self) -> bool:
        return bool(self.ctx.d.phases[self.c["phase_id"]]["done"])

    @property
    def late(self) -> bool:
        due = self.c["due_date"]
        return bool(due) and not self.done and due < iso(self.ctx.now)  # type: ignore[operator]

    expired = False

    @property
    def phases_history(self) -> list[dict[str, Any]]:
        out = []
        for phase_id, t_in, t_out in self.c["history"]:
            out.append({"phase": PhaseNode(self.ctx, self.ctx.d.phases[phase_id]), "firstTimeIn": iso(t_in),
                        "lastTimeOut": iso(t_out), "duration": int((t_out or self.ctx.now) - t_in)})
        return out

    @property
    def fields(self) -> list[dict[str, Any]]:
        return self.ctx.d.card_fields(self.c)

    @property
    def comments(self) -> list[dict[str, Any]]:
        return [c for c in self.ctx.d.comments.values() if c["card_id"] == self.id]

    @property
    def comments_count(self) -> int:
        return len(self.comments)


class RecordNode:
    typename = "TableRecord"

    def __init__(self, ctx: Ctx, record: dict[str, Any]) -> None:
        self.ctx, self.r = ctx, record
        self.id, self.title, self.due_date = record["id"], record["title"], record["due_date"]
        self.url = f"https://app.pipefy.com/database_v2/tables/{record['table_id']}/records/{record['id']}"

    @property
    def table(self) -> TableNode:
        return TableNode(self.ctx, self.ctx.d.tables[self.r["table_id"]])

    @property
    def created_at(self) -> str | None:
        return iso(self.r["created_at"])

    @property
    def updated_at(self) -> str | None:
        return iso(self.r["updated_at"])

    @property
    def record_fields(self) -> list[dict[str, Any]]:
        return self.ctx.d.record_fields(self.r)


class RecordAsCard(RecordNode):
    """A table record as findRecords answers it: a Card node whose `fields` are the record's values."""

    typename = "Card"

    @property
    def createdAt(self) -> str | None:  # noqa: N802 (Pipefy's field name)
        return self.created_at

    @property
    def fields(self) -> list[dict[str, Any]]:
        return self.record_fields


class TableNode:
    def __init__(self, ctx: Ctx, table: dict[str, Any]) -> None:
        self.ctx, self.t = ctx, table
        self.id, self.name, self.table_fields = table["id"], table["name"], table["table_fields"]
        self.url = f"https://app.pipefy.com/database_v2/tables/{table['id']}"

    @property
    def table_records_count(self) -> int:
        return len(self.ctx.d.by_table[self.id])


# -- root resolvers --------------------------------------------------------------------------------
TIME_DEPENDENT_FIELDS = frozenset({"late", "expired", "duration"})
CARD_MEMO_SIZE = 100_000


class CardMemo:
    """Completed card answers per selection, reused until the next mutation (``--prerender`` only).

    graphql-core spends ~13 ms of Python on a page of 50 cards; six phases read at once need more of
    the sandbox's one thread than a 2-core machine shared with the client has. A card's answer to
    the same selection is the same until something is written, unless the selection asks for
    something that moves with the clock (``late``, durations): such documents are never memoized.
    """

    def __init__(self) -> None:
        self.answers: dict[tuple[Any, ...], dict[str, Any]] = {}

    def clear(self) -> None:
        self.answers.clear()


class MemoExecutor(Executor):
    """Executor that takes a card's completed answer from the memo given as ``context_value``."""

    def complete_object_value(self, return_type: Any, field_details_list: Any, info: Any, path: Any,
                              result: Any, position_context: Any) -> Any:
        memo = self.context_value
        if not isinstance(memo, CardMemo) or not isinstance(result, CardNode):
            return super().complete_object_value(return_type, field_details_list, info, path, result,
                                                 position_context)
        key = (tuple(id(d.node) for d in field_details_list), result.id, result.ctx.is_pat)
        known = memo.answers.get(key)
        if known is not None:
            return known
        errors_before = len(self.collected_errors.errors)
        answer = super().complete_object_value(return_type, field_details_list, info, path, result,
                                               position_context)
        if (isinstance(answer, dict) and len(self.collected_errors.errors) == errors_before
                and len(memo.answers) < CARD_MEMO_SIZE):
            memo.answers[key] = answer
        return answer


class Root(Ctx):
    """Query and Mutation fields: graphql-core calls ``root.<field>(info, **args)``."""

    # queries ---------------------------------------------------------------------------------------
    def me(self, info: Any) -> dict[str, Any]:
        return self.d.users["901"] if self.is_pat else SERVICE_ACCOUNT_USER

    def pipe(self, info: Any, id: str) -> PipeNode:  # type: ignore[override]
        return PipeNode(self, super().pipe(id))

    def phase(self, info: Any, id: str) -> PhaseNode:
        phase = self.d.phases.get(str(id))
        if phase is None:
            raise PipefyFault(f"Phase not found with id: {id}", "RESOURCE_NOT_FOUND")
        super().pipe(phase["pipe_id"])
        return PhaseNode(self, phase)

    def card(self, info: Any, id: str) -> CardNode:  # type: ignore[override]
        return CardNode(self, super().card(id))

    def allCards(self, info: Any, pipeId: str, filter: dict[str, Any] | None = None,  # noqa: N802,N803
                 **page: Any) -> dict[str, Any]:
        pipe = super().pipe(pipeId)
        ids = self.d.by_pipe[pipe["id"]]
        if filter:
            predicate = compile_filter(filter, self.d.fields_by_pipe[pipe["id"]])
            key = ("allCards", pipe["id"], json.dumps(filter, sort_keys=True))
            ids = self.d.cached(key, lambda: [i for i in ids if predicate(self.d.cards[str(i)])])
        return self.page(ids, self.card_node, page)

    def cards(self, info: Any, pipe_id: str, search: dict[str, Any] | None = None, **page: Any) -> dict[str, Any]:
        pipe = super().pipe(pipe_id)
        search = search or {}
        title = (search.get("title") or "").lower()
        ignore = {str(i) for i in search.get("ignore_ids") or []}
        labels = {str(i) for i in search.get("label_ids") or []}
        assignees = {str(i) for i in search.get("assignee_ids") or []}
        include_done = bool(search.get("include_done"))
        phases = self.d.phases

        def keep(card: dict[str, Any]) -> bool:
            return ((not title or title in card["title"].lower()) and card["id"] not in ignore
                    and (not labels or bool(labels & set(card["label_ids"])))
                    and (not assignees or bool(assignees & set(card["assignee_ids"])))
                    and (include_done or not phases[card["phase_id"]]["done"]))

        key = ("cards", pipe["id"], json.dumps(search, sort_keys=True, default=str))
        ids = self.d.cached(key, lambda: [i for i in self.d.by_pipe[pipe["id"]] if keep(self.d.cards[str(i)])])
        return self.page(ids, self.card_node, page)

    def findCards(self, info: Any, pipeId: str, search: dict[str, Any], **page: Any) -> dict[str, Any]:  # noqa: N802,N803
        pipe = super().pipe(pipeId)
        field = self.d.fields_by_pipe[pipe["id"]].get(search["fieldId"])
        if field is None:
            raise PipefyFault(f"Field not found with id: {search['fieldId']}", "RESOURCE_NOT_FOUND")
        if field["type"] == "connector":
            raise PipefyFault(f"Connector field {search['fieldId']!r} cannot be searched", "INVALID_INPUT")
        fid, wanted = field["id"], search["fieldValue"]
        key = ("findCards", pipe["id"], fid, wanted)
        ids = self.d.cached(key, lambda: [
            i for i in self.d.by_pipe[pipe["id"]]
            if self.d.matches_exact(field, self.d.cards[str(i)]["values"].get(fid), wanted)])
        return self.page(ids, self.card_node, page)

    def table(self, info: Any, id: str) -> TableNode:  # type: ignore[override]
        return TableNode(self, super().table(id))

    def table_records(self, info: Any, table_id: str, **page: Any) -> dict[str, Any]:
        table = super().table(table_id)
        return self.page(self.d.by_table[table["id"]], self.record_node, page)

    def table_record(self, info: Any, id: str) -> RecordNode:
        return RecordNode(self, self.record(id))

    def findRecords(self, info: Any, tableId: str, search: dict[str, Any], **page: Any) -> dict[str, Any]:  # noqa: N802,N803
        table = super().table(tableId)
        field = self.d.fields_by_table[table["id"]].get(search["fieldId"])
        if field is None:
            raise PipefyFault(f"Field not found with id: {search['fieldId']}", "RESOURCE_NOT_FOUND")
        fid, wanted = field["id"], search["fieldValue"]
        key = ("findRecords", table["id"], fid, wanted)
        ids = self.d.cached(key, lambda: [
            i for i in self.d.by_table[table["id"]]
            if self.d.matches_exact(field, self.d.records[str(i)]["values"].get(fid), wanted)])
        return self.page(ids, lambda i: RecordAsCard(self, self.record(str(i))), page)

    # mutations helpers -----------------------------------------------------------------------------
    def _new_values(self, owner: dict[str, Any], fields: dict[str, dict[str, Any]], pipe_id: str | None,
                    items: list[tuple[Any, Any, str]]) -> dict[str, Any]:
        """Validated new values by field id (``None`` clears); raises on the first bad one."""
        out: dict[str, Any] = {}
        for field_id, value, operation in items:
            field = fields.get(str(field_id))
            if field is None:
                raise PipefyFault(f"Field not found with id: {field_id}", "RESOURCE_NOT_FOUND")
            new = self.d.coerce(field, value, pipe_id)
            if operation in ("ADD", "REMOVE"):
                if field["type"] not in LIST_TYPES:
                    raise PipefyFault(f'Field "{field["label"]}" ({field["type"]}): operation {operation} applies '
                                      "to list fields only; use REPLACE", "INVALID_INPUT")
                current = list(out.get(field["id"], owner["values"].get(field["id"])) or [])
                if operation == "ADD":
                    new = current + [v for v in new or [] if v not in current]
                else:
                    new = [v for v in current if v not in (new or [])]
                new = new or None
            out[field["id"]] = new
        return out

    @staticmethod
    def _listed_value(field: dict[str, Any] | None, value: Any) -> Any:
        """updateFieldsValues' ``value`` is a list (NodeFieldValueInput.value, schema comment): one item
        for a field of a single value; an empty list clears it."""
        if field is None or field["type"] in LIST_TYPES or not isinstance(value, list):
            return value
        if len(value) > 1:
            raise PipefyFault(f'Field "{field["label"]}" ({field["type"]}) takes one value, got {len(value)}',
                              "INVALID_INPUT")
        return value[0] if value else None

    def _apply(self, owner: dict[str, Any], values: dict[str, Any]) -> None:
        for fid, value in values.items():
            if value is None:
                owner["values"].pop(fid, None)
                owner["filled"].pop(fid, None)
            else:
                owner["values"][fid] = value
                owner["filled"][fid] = self.now
        owner["updated_at"] = self.now
        self.d.touch()

    def _due_date(self, value: Any) -> str | None:
        if value in (None, ""):
            return None
        return self.d.coerce({"label": "due_date", "type": "due_date", "options": []}, value)

    @staticmethod
    def _with_id(payload: dict[str, Any], input: dict[str, Any]) -> dict[str, Any]:
        payload["clientMutationId"] = input.get("clientMutationId")
        return payload

    # mutations -------------------------------------------------------------------------------------
    def createCard(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        pipe = super().pipe(input["pipe_id"])
        phase_id = str(input.get("phase_id") or pipe["phase_ids"][0])
        if phase_id not in pipe["phase_ids"]:
            raise PipefyFault(f"Phase {phase_id} does not belong to pipe {pipe['id']}", "INVALID_INPUT")
        for user in input.get("assignee_ids") or []:
            if str(user) not in self.d.users:
                raise PipefyFault(f"User not found with id: {user}", "RESOURCE_NOT_FOUND")
        pipe_labels = {lb["id"] for lb in pipe["labels"]}
        for label in input.get("label_ids") or []:
            if str(label) not in pipe_labels:
                raise PipefyFault(f"Label not found with id: {label}", "RESOURCE_NOT_FOUND")
        fields = self.d.fields_by_pipe[pipe["id"]]
        values = self._new_values({"values": {}}, fields, pipe["id"], [
            (a["field_id"], a.get("field_value"), "REPLACE") for a in input.get("fields_attributes") or []])
        for field in self.d.phases[pipe["startFormPhaseId"]]["fields"]:
            if field["required"] and values.get(field["id"]) is None:
                raise PipefyFault(REQUIRED_MESSAGE.format(label=field["label"]), "RECORD_INVALID")
        card_id = self.d.new_id()
        title = input.get("title") or next((str(v) for v in values.values() if v is not None), f"Card {card_id}")
        card = {"id": card_id, "title": title, "pipe_id": pipe["id"], "phase_id": phase_id,
                "values": {k: v for k, v in values.items() if v is not None}, "filled": {},
                "createdAt": self.now, "updated_at": self.now,
                "finished_at": self.now if self.d.phases[phase_id]["done"] else None,
                "history": [[phase_id, self.now, None]],
                "assignee_ids": [str(a) for a in input.get("assignee_ids") or []],
                "label_ids": [str(lb) for lb in input.get("label_ids") or []],
                "due_date": self._due_date(input.get("due_date"))}
        card["filled"] = {k: self.now for k in card["values"]}
        self.d.add_card(card)
        return self._with_id({"card": CardNode(self, card)}, input)

    def updateCard(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        card = super().card(input["id"])
        if "due_date" in input:
            card["due_date"] = self._due_date(input["due_date"])
        if input.get("title") is not None:
            if not str(input["title"]).strip():
                raise PipefyFault("Title can't be blank", "RECORD_INVALID")
            card["title"] = input["title"]
        if input.get("assignee_ids") is not None:
            unknown = [u for u in input["assignee_ids"] if str(u) not in self.d.users]
            if unknown:
                raise PipefyFault(f"User not found with id: {unknown[0]}", "RESOURCE_NOT_FOUND")
            card["assignee_ids"] = [str(v) for v in input["assignee_ids"]]  # replaces the whole list
        if input.get("label_ids") is not None:
            known = {lb["id"] for lb in self.d.pipes[card["pipe_id"]]["labels"]}
            unknown = [lb for lb in input["label_ids"] if str(lb) not in known]
            if unknown:
                raise PipefyFault(f"Label not found with id: {unknown[0]}", "RESOURCE_NOT_FOUND")
            card["label_ids"] = [str(v) for v in input["label_ids"]]
        card["updated_at"] = self.now
        self.d.touch()
        return self._with_id({"card": CardNode(self, card)}, input)

    def updateCardField(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        card = super().card(input["card_id"])
        values = self._new_values(card, self.d.fields_by_pipe[card["pipe_id"]], card["pipe_id"],
                                  [(input["field_id"], input.get("new_value"), "REPLACE")])
        self._apply(card, values)
        return self._with_id({"success": True, "card": CardNode(self, card)}, input)

    def updateFieldsValues(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        items = input["values"]
        if len(items) > MAX_FIELDS_VALUES:
            raise PipefyFault(f"values: at most {MAX_FIELDS_VALUES} fields can be updated per call, got "
                              f"{len(items)}", "INVALID_INPUT")
        node_id = str(input["nodeId"])
        owner: dict[str, Any]
        if node_id in self.d.records:
            owner = self.d.records[node_id]
            fields, pipe_id = self.d.fields_by_table[owner["table_id"]], None
            node: Any = RecordNode(self, owner)
        elif node_id in self.d.cards:
            owner = super().card(node_id)
            fields, pipe_id = self.d.fields_by_pipe[owner["pipe_id"]], owner["pipe_id"]
            node = CardNode(self, owner)
        else:
            raise PipefyFault(f"Node not found with id: {node_id}", "RESOURCE_NOT_FOUND")
        errors: list[dict[str, Any]] = []
        values: dict[str, Any] = {}
        for item in items:
            try:
                value = self._listed_value(fields.get(str(item["fieldId"])), item.get("value"))
                one = self._new_values({"values": {**owner["values"], **values}}, fields, pipe_id,
                                       [(item["fieldId"], value, item.get("operation") or "REPLACE")])
            except PipefyFault as err:  # `field` is a list on Pipefy (schema comment)
                errors.append({"field": [str(item["fieldId"])], "message": err.message})
            else:
                values.update(one)
        if not errors:  # all or nothing
            self._apply(owner, values)
        return self._with_id({"success": not errors, "userErrors": errors, "updatedNode": node}, input)

    def moveCardToPhase(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        card = super().card(input["card_id"])
        target_id = str(input["destination_phase_id"])
        target = self.d.phases.get(target_id)
        if target is None or target.get("start"):
            raise PipefyFault(f"Phase not found with id: {target_id}", "RESOURCE_NOT_FOUND")
        current = self.d.phases[card["phase_id"]]
        if target_id == current["id"]:
            raise PipefyFault(f"Card {card['id']} is already in phase {current['name']!r}", "INVALID_INPUT")
        if target_id not in current["moves"]:
            allowed = ", ".join(self.d.phases[p]["name"] for p in current["moves"]) or "none"
            raise PipefyFault(f"Card can't be moved from {current['name']!r} to {target['name']!r}: this move is "
                              f"not allowed by the pipe's connections (allowed: {allowed})", "INVALID_INPUT")
        # required fields of the phase the card leaves must be filled (as in Pipefy's UI and API)
        for field in current["fields"]:
            if field["required"] and card["values"].get(field["id"]) is None:
                raise PipefyFault(REQUIRED_MESSAGE.format(label=field["label"]), "INVALID_INPUT")
        history = card["history"]
        history[-1][2] = self.now
        history.append([target_id, self.now, None])
        self.d.set_phase(card, target_id)
        card["updated_at"] = self.now
        card["finished_at"] = self.now if target["done"] else None
        return self._with_id({"card": CardNode(self, card)}, input)

    def deleteCard(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        card = self.d.cards.get(str(input["id"]))
        if card is None:
            raise PipefyFault(f"Card not found with id: {input['id']}", "RESOURCE_NOT_FOUND")
        super().card(card["id"])
        self.d.remove_card(card)
        return self._with_id({"success": True}, input)

    def createComment(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        card = super().card(input["card_id"])
        if not input["text"].strip():
            raise PipefyFault("Text can't be blank", "RECORD_INVALID")
        comment = {"id": self.d.new_id(), "text": input["text"], "card_id": card["id"], "created_at": iso(self.now),
                   "author": self.me(info)}
        self.d.comments[comment["id"]] = comment
        return self._with_id({"comment": comment}, input)

    def createTableRecord(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        table = super().table(input["table_id"])
        values = self._new_values({"values": {}}, self.d.fields_by_table[table["id"]], None, [
            (a["field_id"], a.get("field_value"), "REPLACE") for a in input.get("fields_attributes") or []])
        for field in table["table_fields"]:
            if field["required"] and values.get(field["id"]) is None:
                raise PipefyFault(REQUIRED_MESSAGE.format(label=field["label"]), "RECORD_INVALID")
        record_id = self.d.new_id()
        title = input.get("title") or next((str(v) for v in values.values() if v is not None), f"Record {record_id}")
        record = {"id": record_id, "table_id": table["id"], "title": title, "created_at": self.now,
                  "updated_at": self.now, "values": {k: v for k, v in values.items() if v is not None},
                  "filled": {k: self.now for k, v in values.items() if v is not None},
                  "due_date": self._due_date(input.get("due_date")), "status_id": None}
        self.d.add_record(record)
        return self._with_id({"table_record": RecordNode(self, record)}, input)

    def updateTableRecord(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        record = self.record(input["id"])
        if input.get("title") is not None:
            if not str(input["title"]).strip():
                raise PipefyFault("Title can't be blank", "RECORD_INVALID")
            record["title"] = input["title"]
        if "due_date" in input:
            record["due_date"] = self._due_date(input["due_date"])
        if input.get("statusId") is not None:
            record["status_id"] = str(input["statusId"])
        record["updated_at"] = self.now
        self.d.touch()
        return self._with_id({"table_record": RecordNode(self, record)}, input)

    def setTableRecordFieldValue(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        record = self.record(input["table_record_id"])
        values = self._new_values(record, self.d.fields_by_table[record["table_id"]], None,
                                  [(input["field_id"], input.get("value"), "REPLACE")])
        self._apply(record, values)
        return self._with_id({"table_record": RecordNode(self, record)}, input)

    def deleteTableRecord(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        self.d.remove_record(self.record(input["id"]))
        return self._with_id({"success": True}, input)

    def createPresignedUrl(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        length = input.get("contentLength")
        if length is not None and not 0 <= length <= UPLOAD_MAX_BYTES:
            raise PipefyFault(f"contentLength {length} is over the 512 MB limit", "INVALID_INPUT")
        name = str(input["fileName"]).replace("/", "_")
        key = f"orgs/{input['organizationId']}/uploads/{uuid.uuid4()}/{name}"
        self.service.uploads[key] = {"expires": self.now + UPLOAD_URL_SECONDS, "data": None, "length": length}
        # percent-encoded, as the storage service's presigned URLs are (api-notes: the field value is
        # the URL-decoded path, so names with spaces or accents must be decoded by the client)
        url = f"{self.service.base_url}/pipefy/_uploads/{quote(key)}"
        return self._with_id({"url": url, "downloadUrl": url}, input)


# -- the service -----------------------------------------------------------------------------------
def _field_names(document: DocumentNode) -> set[str]:
    names: set[str] = set()

    class Names(Visitor):
        def enter_field(self, node: FieldNode, *_: Any) -> None:
            names.add(node.name.value)

    visit(document, Names())
    return names


class _Document:
    __slots__ = ("document", "errors", "label", "is_mutation", "memoizable")

    def __init__(self, document: DocumentNode | None, errors: list[dict[str, Any]], label: str,
                 is_mutation: bool) -> None:
        self.document, self.errors, self.label, self.is_mutation = document, errors, label, is_mutation
        self.memoizable = document is not None and not is_mutation and not (
            _field_names(document) & TIME_DEPENDENT_FIELDS)


def _with_correlation(formatted: Any) -> dict[str, Any]:
    error: dict[str, Any] = dict(formatted)
    extensions = error["extensions"] = dict(error.get("extensions") or {})
    extensions.setdefault("correlation_id", str(uuid.uuid4()))
    return error


class PipefyService:
    """The ``/pipefy`` routes over :class:`~crm_sandbox.pipefy_data.PipefyData`.

    :param state: the shared sandbox state (config, clock, lock, counters, random).
    """

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.data = PipefyData(state.config, state.random, state.clock.now())
        self.windows: dict[str, SlidingWindow] = {}
        self.blocked_until: dict[str, float] = {}
        self.monthly: dict[tuple[str, str], int] = {}
        client_id, secret = DEFAULT_PIPEFY_CLIENT
        # service accounts: client id -> secret, plan of issued tokens, token lifetime in seconds
        self.clients: dict[str, dict[str, Any]] = {
            client_id: {"secret": secret, "plan": "unlimited", "expires_in": 3600}}
        self.issued: dict[str, dict[str, Any]] = {}  # access token -> client id, plan, expiry
        self.uploads: dict[str, dict[str, Any]] = {}
        self.base_url = ""
        self._documents: dict[str, _Document] = {}
        self.card_memo = CardMemo()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/graphql", self.graphql, methods=["POST"]),
            Route("/oauth/token", self.oauth_token, methods=["POST"]),
            Route("/_state", self.full_state, methods=["GET"]),
            Route("/_service_accounts", self.service_accounts, methods=["POST"]),
            Route("/_uploads/{key:path}", self.upload, methods=["PUT", "GET"]),
        ]

    # -- snapshot --------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        d = self.data
        return {"pipes": d.pipes, "phases": d.phases, "cards": d.cards, "tables": d.tables, "records": d.records,
                "comments": d.comments, "next_id": d.next_id}

    def restore(self, data: dict[str, Any]) -> None:
        with self.state.lock:
            for key in ("pipes", "phases", "cards", "tables", "records", "comments"):
                setattr(self.data, key, data.get(key, {}))
            self.data.next_id = data["next_id"]
            self.card_memo.clear()
            self.data.reindex()

    # -- control and state routes ------------------------------------------------------------------
    async def full_state(self, request: Request) -> Response:
        with self.state.lock:
            return JSONResponse(self.data.state_json())

    async def service_accounts(self, request: Request) -> Response:
        """Register or change a service account: ``{"client_id", "client_secret", "plan", "expires_in"}``."""
        body = await request.json()
        plan = body.get("plan", "unlimited")
        if plan not in MONTHLY_QUOTA or not body.get("client_id") or not body.get("client_secret"):
            return JSONResponse({"error": "need client_id, client_secret and a plan among "
                                          f"{sorted(MONTHLY_QUOTA)}"}, status_code=400)
        with self.state.lock:
            self.clients[body["client_id"]] = {"secret": body["client_secret"], "plan": plan,
                                               "expires_in": int(body.get("expires_in", 3600))}
        return JSONResponse({"client_id": body["client_id"], "plan": plan,
                             "expires_in": int(body.get("expires_in", 3600))})

    async def upload(self, request: Request) -> Response:
        """The presigned URL: PUT stores the bytes (512 MB at most, within 15 minutes), GET returns them."""
        key = request.path_params["key"]
        with self.state.lock:
            slot = self.uploads.get(key)
            now = self.state.clock.now()
        if slot is None:
            return Response("NoSuchKey", status_code=404)
        if request.method == "PUT":
            if now > slot["expires"]:
                return Response("Request has expired", status_code=403)
            body = await request.body()
            if len(body) > UPLOAD_MAX_BYTES:
                return Response("EntityTooLarge", status_code=400)
            slot["data"] = body
            return Response(status_code=200)
        if slot["data"] is None:
            return Response("NoSuchKey", status_code=404)
        return Response(slot["data"], status_code=200)

    # -- OAuth -------------------------------------------------------------------------------------
    async def oauth_token(self, request: Request) -> Response:
        form: dict[str, Any]
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                form = await request.json()
            except ValueError:
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            if not isinstance(form, dict):
                return JSONResponse({"error": "invalid_request"}, status_code=400)
        else:
            form = dict(await request.form())
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, binascii.Error):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        with self.state.lock:
            client = self.clients.get(str(client_id))
            if client is None or not secrets.compare_digest(str(client_secret), client["secret"]):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            now = self.state.clock.now()
            self.issued = {t: v for t, v in self.issued.items() if v["expires"] > now}
            token = "sa-" + secrets.token_hex(16)
            self.issued[token] = {"client_id": client_id, "plan": client["plan"],
                                  "expires": now + client["expires_in"]}
        return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": client["expires_in"],
                             "created_at": int(now)})

    def _caller(self, token: str) -> tuple[str, str, bool] | None:
        """(plan, principal, is a personal token) of a bearer token, or None when it is not valid."""
        plan = self.state.config.pipefy_tokens.get(token)
        if plan is not None:
            return plan, token, True
        issued = self.issued.get(token)
        if issued and issued["expires"] > self.state.clock.now():
            # limits belong to the service account, whichever of its tokens is used
            return issued["plan"], f"sa:{issued['client_id']}", False
        return None

    # -- GraphQL -----------------------------------------------------------------------------------
    def _document(self, query: str) -> _Document:
        """Parse and validate once per distinct query text (benchmarks repeat the same documents)."""
        cached = self._documents.get(query)
        if cached is not None:
            return cached
        try:
            document = parse(query)
        except GraphQLError as err:
            return _Document(None, [_with_correlation(err.formatted)], "graphql", False)
        errors = [_with_correlation(e.formatted) for e in validate(SCHEMA, document)]
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        roots = [s.name.value for op in operations[:1] for s in op.selection_set.selections
                 if hasattr(s, "name")]
        is_mutation = any(op.operation.value == "mutation" for op in operations)
        label = operations[0].name.value if len(operations) == 1 and operations[0].name else ",".join(roots)
        entry = _Document(None if errors else document, errors, label or "graphql", is_mutation)
        if len(self._documents) >= 1000:
            self._documents.clear()
            self.card_memo.clear()  # its keys are nodes of these documents
        self._documents[query] = entry
        return entry

    @staticmethod
    def _too_many(retry_after: float) -> Response:
        return JSONResponse(
            {"errors": [{"message": "Too many requests. You have exceeded the limit of requests per 30 seconds "
                                    "and are blocked; retry later", "extensions": {"code": "TOO_MANY_REQUESTS"}}]},
            status_code=429, headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})

    async def graphql(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        with self.state.lock:
            caller = self._caller(token) if token else None
        if caller is None:
            return JSONResponse({"errors": [{"message": "Unauthorized. Use 'Authorization: Bearer <token>' with a "
                                             "valid token", "extensions": {"code": "UNAUTHORIZED"}}]},
                                status_code=401)
        plan, principal, is_pat = caller
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("query", ""), str):
            return JSONResponse({"errors": [{"message": "Request body must be a JSON object with a 'query'"}]},
                                status_code=400)
        variables = body.get("variables") or {}
        if not isinstance(variables, dict):
            return JSONResponse({"errors": [{"message": "'variables' must be a JSON object"}]}, status_code=400)
        doc = self._document(body.get("query") or "")
        self.base_url = f"{request.url.scheme}://{request.url.netloc}"
        cfg, counters, key = self.state.config, self.state.counters, token_key(principal)
        with self.state.lock:
            now = self.state.clock.now()
            counters.count_request("pipefy", body.get("operationName") or doc.label, principal)
            blocked = self.blocked_until.get(key, 0.0)
            if blocked > now:
                counters.count_429("pipefy")
                return self._too_many(blocked - now)
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = SlidingWindow(cfg.pipefy_requests_per_window, cfg.pipefy_window_seconds)
            window.limit, window.window = cfg.pipefy_requests_per_window, cfg.pipefy_window_seconds
            seen = window.hit(now)
            counters.note_window(f"pipefy:{key}", seen)
            if seen > window.limit:
                self.blocked_until[key] = now + cfg.pipefy_block_seconds
                counters.count_429("pipefy")
                return self._too_many(cfg.pipefy_block_seconds)
            quota = MONTHLY_QUOTA.get(plan)
            month = time.strftime("%Y-%m", time.gmtime(now))
            used = self.monthly.get((key, month), 0)
            if quota is not None and used >= quota:
                return JSONResponse({"data": None, "errors": [{
                    "message": f"Usage limit exceeded: the {plan} plan allows {quota} API calls per month",
                    "extensions": {"code": "USAGE_LIMIT_EXCEEDED", "correlation_id": str(uuid.uuid4())}}]})
            self.monthly[(key, month)] = used + 1
            if doc.document is None:
                return JSONResponse({"errors": [_with_correlation({**e, "extensions": {
                    k: v for k, v in (e.get("extensions") or {}).items() if k != "correlation_id"}}) for e in doc.errors]})
            if doc.is_mutation:
                self.card_memo.clear()
            memo = self.card_memo if self.state.config.prerender and doc.memoizable else None
            result = execute_sync(SCHEMA, doc.document, root_value=Root(self, principal, is_pat),
                                  variable_values=variables, operation_name=body.get("operationName"),
                                  context_value=memo, executor_class=MemoExecutor)
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            out["errors"] = [self._format_error(e) for e in result.errors]
        return FastJSONResponse(out)

    @staticmethod
    def _format_error(error: GraphQLError) -> dict[str, Any]:
        original = error.original_error
        if original is not None and not isinstance(original, GraphQLError):
            # a bug in the sandbox: answer like Pipefy's opaque internal error, keep the trace in the log
            log.error("pipefy sandbox resolver failed at %s", error.path, exc_info=original)
            return {"message": "Something went wrong", "locations": error.formatted.get("locations"),
                    "path": error.path, "extensions": {"code": "INTERNAL_SERVER_ERROR",
                                                       "correlation_id": str(uuid.uuid4())}}
        return _with_correlation(error.formatted)
