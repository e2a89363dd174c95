"""Pipefy (GraphQL) hook: connection, auth, rate limit, typed errors, pagination, card and record actions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import cached_property
from typing import Any, cast
from urllib.parse import unquote, urlparse

import httpx
import requests
from airflow.providers.common.compat.sdk import BaseHook
from graphql import DocumentNode, parse, print_ast

from airflow_provider_crm.clients.pipefy.policy import PLANS, pipefy_policy
from airflow_provider_crm.common import connection_form, http, jsoncodec
from airflow_provider_crm.common.errors import (
    CrmApiError,
    CrmAuthError,
    CrmConfigError,
    CrmError,
    CrmInputError,
    CrmInternalServerError,
    CrmNotFoundError,
    CrmPermanentApiError,
    CrmPermissionError,
    CrmPlanLimitError,
    CrmRateLimitError,
    CrmTransientApiError,
    CrmValidationError,
)
from airflow_provider_crm.common.ratelimit.limiter import RateLimiter, build_limiter
from airflow_provider_crm.common.readahead import read_ahead
from airflow_provider_crm.common.retry import acall_with_retries, call_with_retries
from airflow_provider_crm.common.settings import ConnectionReader
from airflow_provider_crm.common.writes import create_safely
from airflow_provider_crm.get_provider_info import PIPEFY_CONN_FIELDS, PIPEFY_UI_FIELD_BEHAVIOUR

DEFAULT_API_URL = "https://api.pipefy.com/graphql"
DEFAULT_OAUTH_TOKEN_URL = "https://app.pipefy.com/oauth/token"
WEB_URL = "https://app.pipefy.com"
PAGE_SIZE = 50  # Pipefy's documented maximum per page
UPDATE_FIELDS_BATCH = 30  # updateFieldsValues takes at most 30 values

# --- GraphQL documents: parsed once, values always passed as variables -----------------------------
CARD_FIELDS = """
fragment CardParts on Card {
  id title url due_date createdAt updated_at finished_at done
  current_phase { id name }
  pipe { id name }
  assignees { id name email }
  labels { id name }
  fields { field { id label type internal_id } name value array_value date_value datetime_value float_value
           filled_at updated_at }
}
"""
ME = parse("query Me { me { id name email } }")
PIPE = parse(
    """
query Pipe($id: ID!) {
  pipe(id: $id) {
    id uuid name startFormPhaseId
    phases { id name cards_count done fields { id internal_id label type required options } }
    labels { id name }
    start_form_fields { id internal_id label required type options }
  }
}"""
)
PHASE = parse(
    """
query Phase($id: ID!) {
  phase(id: $id) { id name cards_count done cards_can_be_moved_to_phases { id name }
                   fields { id internal_id label type required options } }
}"""
)
CARD = parse(
    CARD_FIELDS
    + """
query Card($id: ID!) { card(id: $id) { ...CardParts phases_history { phase { id name } firstTimeIn lastTimeOut } } }"""
)
ALL_CARDS = parse(
    CARD_FIELDS
    + """
query AllCards($pipeId: ID!, $first: Int, $after: String, $filter: AdvancedSearch) {
  allCards(pipeId: $pipeId, first: $first, after: $after, filter: $filter) {
    pageInfo { hasNextPage endCursor }
    edges { node { ...CardParts } }
  }
}"""
)
PHASE_CARDS = parse(
    CARD_FIELDS
    + """
query PhaseCards($id: ID!, $first: Int, $after: String) {
  phase(id: $id) {
    id
    cards(first: $first, after: $after) {
      pageInfo { hasNextPage endCursor }
      edges { node { ...CardParts phases_history { phase { id } firstTimeIn } } }
    }
  }
}"""
)
FIND_CARDS = parse(
    CARD_FIELDS
    + """
query FindCards($pipeId: ID!, $search: FindCards!, $first: Int, $after: String) {
  findCards(pipeId: $pipeId, search: $search, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges { node { ...CardParts } }
  }
}"""
)
CREATE_CARD = parse(
    """
mutation CreateCard($input: CreateCardInput!) { createCard(input: $input) { card { id title url current_phase { id name } } } }"""
)
UPDATE_CARD = parse(
    """
mutation UpdateCard($input: UpdateCardInput!) { updateCard(input: $input) { card { id title updated_at } } }"""
)
UPDATE_FIELDS_VALUES = parse(
    """
mutation UpdateFieldsValues($input: UpdateFieldsValuesInput!) {
  updateFieldsValues(input: $input) { success userErrors { field message } }
}"""
)
MOVE_CARD = parse(
    """
mutation MoveCard($input: MoveCardToPhaseInput!) {
  moveCardToPhase(input: $input) { card { id current_phase { id name } } }
}"""
)
DELETE_CARD = parse("mutation DeleteCard($input: DeleteCardInput!) { deleteCard(input: $input) { success } }")
CREATE_COMMENT = parse(
    "mutation CreateComment($input: CreateCommentInput!) { createComment(input: $input) { comment { id } } }"
)
TABLE = parse(
    """
query Table($id: ID!) {
  table(id: $id) { id name table_records_count table_fields { id label type required options } }
}"""
)
TABLE_RECORDS = parse(
    """
query TableRecords($id: ID!, $first: Int, $after: String) {
  table_records(table_id: $id, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges { node { id title created_at updated_at record_fields { name value array_value date_value datetime_value float_value field { id label type } } } }
  }
}"""
)
# findRecords takes a String table id and answers a CardConnection whose nodes carry `fields`; its
# search input's type name is unproven, so the object is written inline (as Pipefy's own SDK does).
# Evidence: ../shared/api-notes/pipefy.md, "Checked against public evidence".
FIND_RECORDS = parse(
    """
query FindRecords($tableId: String!, $fieldId: String!, $fieldValue: String!, $first: Int, $after: String) {
  findRecords(tableId: $tableId, search: {fieldId: $fieldId, fieldValue: $fieldValue}, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges { node { id title createdAt updated_at fields { name value array_value date_value datetime_value float_value field { id label type } } } }
  }
}"""
)
CREATE_TABLE_RECORD = parse(
    """
mutation CreateTableRecord($input: CreateTableRecordInput!) {
  createTableRecord(input: $input) { table_record { id title } }
}"""
)
UPDATE_TABLE_RECORD = parse(
    """
mutation UpdateTableRecord($input: UpdateTableRecordInput!) { updateTableRecord(input: $input) { table_record { id } } }"""
)
SET_TABLE_RECORD_FIELD = parse(
    """
mutation SetTableRecordFieldValue($input: SetTableRecordFieldValueInput!) {
  setTableRecordFieldValue(input: $input) { table_record { id } }
}"""
)
CREATE_PRESIGNED_URL = parse(
    """
mutation CreatePresignedUrl($organizationId: ID!, $fileName: String!, $contentType: String, $contentLength: Int) {
  createPresignedUrl(input: {organizationId: $organizationId, fileName: $fileName, contentType: $contentType,
                             contentLength: $contentLength}) { url downloadUrl }
}"""
)
DELETE_TABLE_RECORD = parse(
    "mutation DeleteTableRecord($input: DeleteTableRecordInput!) { deleteTableRecord(input: $input) { success } }"
)

_QUERY_TEXTS: dict[int, tuple[DocumentNode, str]] = {}


def query_text(document: DocumentNode) -> str:
    """A document's text, printed once per document (printing costs more than sending it)."""
    known = _QUERY_TEXTS.get(id(document))
    if known is None or known[0] is not document:
        if len(_QUERY_TEXTS) > 256:
            _QUERY_TEXTS.clear()
        known = _QUERY_TEXTS[id(document)] = (document, print_ast(document))
    return known[1]


PERMISSION_HINT = "A service account must be added as a member of each pipe or table it reads or writes"

_HTTP_ERROR_CLASSES: dict[int, type[CrmApiError]] = {
    403: CrmPermissionError,
    404: CrmNotFoundError,
    410: CrmNotFoundError,
    422: CrmValidationError,
}

_ERROR_CLASSES: dict[str, type[CrmApiError]] = {
    "UNAUTHORIZED": CrmAuthError,
    "PERMISSION_DENIED": CrmPermissionError,
    "INVALID_ROLE": CrmPermissionError,
    "RESOURCE_NOT_FOUND": CrmNotFoundError,
    "RECORD_NOT_FOUND": CrmNotFoundError,
    "INVALID_INPUT": CrmValidationError,
    "RECORD_INVALID": CrmValidationError,
    "FEATURE_NOT_ALLOWED_BY_ORGANIZATION_PLAN": CrmPlanLimitError,
    "INTERNAL_SERVER_ERROR": CrmInternalServerError,
}


def _singular_error(error: Any) -> dict[str, Any]:
    """A top-level ``error`` answer as one entry of a GraphQL ``errors`` list."""
    if isinstance(error, dict):
        details: dict[str, Any] = error["details"] if isinstance(error.get("details"), dict) else {}
        return {"message": str(error.get("message") or details.get("code") or "error"),
                "extensions": {"code": details.get("code") or error.get("code"),
                               "correlation_id": details.get("correlation_id")}}
    text = str(error)
    return {"message": text, "extensions": {"code": "UNAUTHORIZED" if "token" in text.lower() else text.upper()}}


def pipefy_error(errors: list[dict[str, Any]], data: Any = None, status: int | None = None) -> CrmError:
    """The typed exception for a GraphQL ``errors`` list (first error decides the type)."""
    first = errors[0] if errors else {}
    message = "; ".join(str(e.get("message", "")) for e in errors) or "unknown error"
    extensions = first.get("extensions") or {}
    code = extensions.get("code") or first.get("type") or first.get("code")
    code = str(code) if code is not None else None
    correlation_id = extensions.get("correlation_id")
    upper = (code or "").upper()
    if upper == "USAGE_LIMIT_EXCEEDED":  # Pipefy's e-mail sending limit, not the monthly API quota
        return CrmPlanLimitError(message, service="pipefy", status=status, code=code, correlation_id=correlation_id,
                                 data=data, hint="Pipefy's limit on e-mails sent from the account was reached")
    if "RATE" in upper or "TOO_MANY" in upper or "too many requests" in message.lower():
        return CrmRateLimitError(message, service="pipefy", status=status, code=code, correlation_id=correlation_id,
                                 data=data)
    cls = _ERROR_CLASSES.get(upper)
    if cls is None:
        cls = {"ResourceNotFoundError": CrmNotFoundError}.get(str(first.get("type")), CrmPermanentApiError)
    hint = PERMISSION_HINT if cls is CrmPermissionError else None
    return cls(message, service="pipefy", status=status, code=code, correlation_id=correlation_id, data=data,
               hint=hint)


def named_error(err: CrmApiError, what: str) -> CrmApiError:
    """The same error, its message prefixed with what was being done (``card 123``, ``pipe 301``):
    the service's own message, code and correlation id stay, ``api_message`` stays the service's."""
    if what and str(err.api_message).startswith(what):
        return err
    hint = PERMISSION_HINT if isinstance(err, CrmPermissionError) else getattr(err, "hint", None)
    new = type(err).__new__(type(err))
    CrmApiError.__init__(new, f"{what}: {err.api_message}", service=err.service, status=err.status, code=err.code,
                         correlation_id=err.correlation_id, data=err.data, hint=hint)
    new.__dict__.update({k: v for k, v in err.__dict__.items() if k not in new.__dict__})
    new.api_message = err.api_message
    return new


# --- values ---------------------------------------------------------------------------------------
_TEXT_TYPES = {"short_text", "long_text", "email", "phone", "select", "radio_vertical", "radio_horizontal", "cpf",
               "cnpj", "statement", "id"}
_LIST_TYPES = {"checklist_vertical", "checklist_horizontal", "assignee_select", "label_select", "connector",
               "attachment"}


def to_pipefy_value(field: dict[str, Any], value: Any) -> Any:
    """A Python value in the write format of a Pipefy field type.

    :param field: field metadata with ``id``, ``label``, ``type`` (and ``options`` for choices).
    :param value: str, int, float, Decimal, date, datetime, bool or a list (for list types).
    """
    ftype = field.get("type") or "short_text"
    name = f"field {field.get('label') or field.get('id')!r} ({ftype})"
    if value is None:
        return None
    if ftype in _LIST_TYPES:
        items = value if isinstance(value, (list, tuple, set)) else [value]
        return [str(item) for item in items]
    if isinstance(value, (list, tuple, set, dict)):
        raise CrmInputError(f"{name}: cannot write a {type(value).__name__} ({value!r}); it takes a single value")
    if ftype in ("number", "currency"):
        if isinstance(value, bool):
            raise CrmInputError(f"{name}: {value!r} is not a number")
        try:
            number = Decimal(str(value).strip())
        except Exception:
            raise CrmInputError(f"{name}: {value!r} is not a number") from None
        if not number.is_finite():
            raise CrmInputError(f"{name}: {value!r} is not a finite number")
        return format(number, "f")
    if ftype in ("date",):
        if isinstance(value, datetime):
            value = value.date()
        if isinstance(value, date):
            return value.isoformat()
        try:
            return date.fromisoformat(str(value)).isoformat()
        except ValueError:
            raise CrmInputError(f"{name}: {value!r} is not a date (use YYYY-MM-DD or a date object)") from None
    if ftype in ("datetime", "due_date"):
        if isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        elif isinstance(value, date):
            moment = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        else:
            try:
                moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            except ValueError:
                raise CrmInputError(f"{name}: {value!r} is not a date-time (use ISO 8601)") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
        return moment.isoformat()
    if ftype == "time":
        text = value.strftime("%H:%M") if isinstance(value, (datetime,)) else str(value)
        if len(text) != 5 or text[2] != ":" or not (text[:2] + text[3:]).isdigit():
            raise CrmInputError(f"{name}: {value!r} is not a time (use HH:MM)")
        return text
    if ftype in ("select", "radio_vertical", "radio_horizontal") and field.get("options"):
        options = [str(o) for o in field["options"]]
        if str(value) not in options:
            raise CrmInputError(f"{name}: {value!r} is not one of its options {options}")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_MACHINE_KEYS = {"number": "float_value", "currency": "float_value", "date": "date_value",
                 "datetime": "datetime_value", "due_date": "datetime_value",
                 **dict.fromkeys(_LIST_TYPES, "array_value")}


def machine_value(item: dict[str, Any]) -> Any:
    """The machine-readable value of a card or record field as read (``array_value`` for lists,
    ``float_value`` for numbers, ``date_value`` / ``datetime_value`` for dates), else its text."""
    ftype = (item.get("field") or {}).get("type")
    key = _MACHINE_KEYS.get(str(ftype))
    if key is not None and item.get(key) is not None:
        return item[key]
    if ftype is None:  # type unknown: the first machine value present
        for key in ("array_value", "float_value", "date_value", "datetime_value"):
            if item.get(key) is not None:
                return item[key]
    return item.get("value")


def same_value(field: dict[str, Any], have: Any, wanted: Any) -> bool:
    """Whether a field's current machine value equals a value in write format (to skip no-op updates)."""
    if wanted is None or have is None:
        return wanted is None and have in (None, "", [])
    ftype = field.get("type")
    if isinstance(wanted, list):
        return sorted(map(str, have if isinstance(have, list) else [have])) == sorted(map(str, wanted))
    if ftype in ("number", "currency"):
        try:
            return Decimal(str(have)) == Decimal(str(wanted))
        except ArithmeticError:
            return False
    if ftype in ("datetime", "due_date"):
        try:
            a = datetime.fromisoformat(str(have).replace("Z", "+00:00"))
            b = datetime.fromisoformat(str(wanted).replace("Z", "+00:00"))
        except ValueError:
            return False
        return a.replace(tzinfo=a.tzinfo or timezone.utc) == b.replace(tzinfo=b.tzinfo or timezone.utc)
    return str(have) == str(wanted)


def flatten_card_fields(card: dict[str, Any]) -> dict[str, Any]:
    """Card (or record) fields by label and by id holding the machine-readable value, plus
    ``<field id>__display`` holding the display text Pipefy shows."""
    out: dict[str, Any] = {}
    for item in card.get("fields") or card.get("record_fields") or []:
        field = item.get("field") or {}
        value = machine_value(item)
        for key in filter(None, (field.get("label") or item.get("name"), field.get("id"))):
            out[key] = value
        out[f"{field.get('id') or item.get('name')}__display"] = item.get("value")
    return out


class PipefyHook(BaseHook):
    """Talks to Pipefy's GraphQL API through one Airflow connection.

    Every request passes the shared rate limiter (500 requests / 30 s per token, the plan's monthly
    quota) and is retried when that is safe.

    :param pipefy_conn_id: the ``pipefy`` connection to use.
    :param timeout: seconds to wait for an answer.
    """

    conn_name_attr = "pipefy_conn_id"
    default_conn_name = "pipefy_default"
    conn_type = "pipefy"
    hook_name = "Pipefy"

    def __init__(self, pipefy_conn_id: str = default_conn_name, timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipefy_conn_id = pipefy_conn_id
        self.timeout = timeout
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = threading.Lock()
        self._metadata: dict[tuple[str, str], Any] = {}

    # -- connection form (Airflow 3.0 / 3.1; 3.2+ reads get_provider_info) ---------------------------
    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        return connection_form.form_widgets(PIPEFY_CONN_FIELDS)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return connection_form.field_behaviour(PIPEFY_UI_FIELD_BEHAVIOUR)

    # -- settings ----------------------------------------------------------------------------------
    @cached_property
    def settings(self) -> dict[str, Any]:
        """The connection, read and validated. Errors name the connection and field, never a secret."""
        return self.read_settings(self.get_connection(self.pipefy_conn_id))

    def read_settings(self, conn: Any) -> dict[str, Any]:
        reader = ConnectionReader.for_connection(self.pipefy_conn_id, "pipefy", conn)
        client_id = reader.text("client_id")
        client_secret = reader.text("client_secret")
        token = (conn.password or "").strip() or None
        if client_id and not client_secret:
            raise CrmConfigError(self.pipefy_conn_id, "client_secret", "is required when client_id is set")
        if client_secret and not client_id:
            raise CrmConfigError(self.pipefy_conn_id, "client_id", "is required when client_secret is set")
        if not token and not client_id:
            raise CrmConfigError(
                self.pipefy_conn_id, "password",
                "is empty: set a Pipefy token, or a service account's client_id and client_secret",
            )
        host = (conn.host or "").strip()
        if host and "://" not in host:
            host = f"https://{host}"
        return {
            "api_url": reader.url("host", host, DEFAULT_API_URL),
            "token": token,
            "client_id": client_id,
            "client_secret": client_secret,
            "oauth_token_url": reader.url("oauth_token_url", reader.text("oauth_token_url"), DEFAULT_OAUTH_TOKEN_URL),
            "plan": reader.choice("plan", PLANS, "unlimited"),
            "requests_per_30s": reader.positive_int("requests_per_30s"),
            "monthly_quota": reader.positive_int("monthly_quota"),
            "rate_limit_store": reader.store(),
            "web_url": reader.url("web_url", web_url, WEB_URL) if (web_url := reader.text("web_url")) else None,
        }

    @cached_property
    def session(self) -> requests.Session:
        return http.pooled_session()

    @cached_property
    def limiter(self) -> RateLimiter:
        s = self.settings
        # the limit belongs to the credential: a service account is keyed by its client id
        key = s["token"] if not s["client_id"] else f"sa:{s['client_id']}"
        policy = pipefy_policy(s["plan"], conn_id=self.pipefy_conn_id,
                               overrides={"requests_per_30s": s["requests_per_30s"], "monthly_quota": s["monthly_quota"]})
        return build_limiter(policy, key, store=s["rate_limit_store"], conn_id=self.pipefy_conn_id)

    def get_conn(self) -> requests.Session:
        return self.session

    # -- links for people ----------------------------------------------------------------------------
    @property
    def web_url(self) -> str:
        """Base URL of Pipefy's web app for this connection: the ``web_url`` extra, else derived from
        the API URL (``https://app.pipefy.com`` for Pipefy's cloud, the API URL without ``/graphql``
        for a single-tenant domain or the sandbox)."""
        return self.settings["web_url"] or web_url_for(self.settings["api_url"])

    def card_url(self, card_id: str | int) -> str:
        return card_url(card_id, self.web_url)

    def pipe_url(self, pipe_id: str | int) -> str:
        return pipe_url(pipe_id, self.web_url)

    def table_url(self, table_id: str | int) -> str:
        return table_url(table_id, self.web_url)

    # -- auth --------------------------------------------------------------------------------------
    def _bearer(self, force_refresh: bool = False) -> str:
        s = self.settings
        if not s["client_id"]:
            return s["token"]
        with self._token_lock:
            if force_refresh or not self._token or time.time() > self._token_expires - 60:
                self._token, self._token_expires = self._fetch_service_account_token()
            return self._token

    def _fetch_service_account_token(self) -> tuple[str, float]:
        s = self.settings
        try:
            resp = self.session.post(
                s["oauth_token_url"],
                data={"grant_type": "client_credentials", "client_id": s["client_id"],
                      "client_secret": s["client_secret"]},
                timeout=self.timeout,
            )
        except http.TRANSPORT_ERRORS as err:
            raise CrmTransientApiError(f"token endpoint: {http.failure_text(err)}", service="pipefy") from None
        if resp.status_code >= 500:
            raise CrmTransientApiError("token endpoint error", service="pipefy", status=resp.status_code)
        if resp.status_code != 200:
            raise CrmAuthError(
                f"service account token refused for connection {self.pipefy_conn_id!r} (check client_id and "
                "client_secret)", service="pipefy", status=resp.status_code,
            )
        body = _token_body(resp)
        return body["access_token"], time.time() + float(body.get("expires_in") or 3600)

    # -- requests ----------------------------------------------------------------------------------
    def _post_once(self, document: DocumentNode, variables: dict[str, Any], kind: str) -> dict[str, Any]:
        self.limiter.before_request(kind=kind)
        body = {"query": query_text(document), "variables": variables}
        what = "POST graphql"
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._bearer(force_refresh=attempt == 2)}"}
            resp = http.send(self.session, "POST", self.settings["api_url"], what=what, service="pipefy",
                             timeout=self.timeout, json=body, headers=headers)
            self.limiter.after_response(resp.status_code, resp.headers, kind=kind)
            if resp.status_code == 401 and attempt == 1 and self.settings["client_id"]:
                resp.close()
                continue  # the service-account token may have expired early: refresh once
            break
        content = http.read_body(resp, what=what, service="pipefy")
        try:
            return self._parse(resp.status_code, content, resp.headers.get("content-type"))
        except CrmRateLimitError:
            if resp.status_code != 429:  # a rate-limit error inside a 200: wait out the block all the same
                self.limiter.after_response(429, resp.headers, kind=kind)
            raise

    def _parse(self, status: int, content: bytes, content_type: str | None) -> dict[str, Any]:
        try:
            payload = jsoncodec.loads(content)
        except ValueError:
            payload = None
        if status == 429:
            raise CrmRateLimitError("rate limit exceeded (HTTP 429)", service="pipefy", status=status)
        if status == 401:
            raise CrmAuthError(
                f"token refused for connection {self.pipefy_conn_id!r}", service="pipefy", status=status
            )
        if status >= 500:
            raise CrmTransientApiError(f"server error {status}", service="pipefy", status=status)
        if not isinstance(payload, dict):
            # an HTML page (a proxy's or a maintenance page) or JSON cut short: the real status, retryable
            raise CrmTransientApiError(f"{http.not_json(content, content_type)} (HTTP {status})", service="pipefy",
                                       status=status)
        if "error" in payload and not payload.get("errors") and not payload.get("data"):
            # Pipefy's other error shape: {"error": "invalid_token"} or {"error": {"message", "details":
            # {"code", "correlation_id"}}}, sometimes with HTTP 200
            payload = {"errors": [_singular_error(payload["error"])]}
        if payload.get("errors"):
            error = pipefy_error(payload["errors"], payload.get("data"), status)
            if isinstance(error, CrmAuthError):  # say which connection holds the refused credentials
                error = CrmAuthError(error.api_message, service="pipefy", status=status, code=error.code,
                                     correlation_id=error.correlation_id,
                                     hint=f"Connection {self.pipefy_conn_id!r}: check its token or service account")
            raise error
        if status >= 400:
            cls = _HTTP_ERROR_CLASSES.get(status, CrmPermanentApiError)
            raise cls(f"HTTP {status}", service="pipefy", status=status)
        return payload.get("data") or {}

    def execute(self, document: DocumentNode, variables: dict[str, Any] | None = None, *, write: bool = False,
                description: str = "") -> dict[str, Any]:
        """Run one GraphQL document (reads and idempotent writes are retried on transient errors)."""
        description = description or "pipefy request"
        try:
            return call_with_retries(
                lambda: self._post_once(document, variables or {}, "write" if write else "read"),
                idempotent=True, description=description, stats=self.limiter.stats,
            )
        except CrmApiError as err:
            raise named_error(err, description) from None

    def paginate(self, document: DocumentNode, variables: dict[str, Any], path: list[str]) -> Iterator[dict[str, Any]]:
        """Yield nodes of a Relay connection at ``path`` in the answer, page by page (one page read
        ahead: see common/readahead.py)."""
        ident = next((variables[k] for k in ("id", "pipeId", "tableId") if k in variables), None)
        what = f"{path[0]} of {ident}" if ident is not None else path[0]

        def fetch(position: tuple[int, str | None]) -> dict[str, Any]:
            page, after = position
            data = self.execute(document, {**variables, "first": PAGE_SIZE, "after": after},
                                description=f"{what} page {page}")
            connection: Any = data
            for key in path:
                connection = (connection or {}).get(key)
            if connection is None:
                raise CrmNotFoundError(f"{path[0]} returned nothing for {variables}", service="pipefy")
            return cast(dict[str, Any], connection)

        def following(position: tuple[int, str | None], connection: dict[str, Any]) -> tuple[int, str] | None:
            info = connection.get("pageInfo") or {}
            if not info.get("hasNextPage") or not info.get("endCursor"):
                return None
            return position[0] + 1, info["endCursor"]

        for connection in read_ahead(fetch, (1, None), following):
            for edge in connection.get("edges") or []:
                yield edge["node"]

    def test_connection(self) -> tuple[bool, str]:
        try:
            me = self.execute(ME, description="me")["me"]
        except Exception as err:  # the UI shows the message
            return False, str(err)
        return True, f"Connected to Pipefy as {me.get('email') or me.get('name')} (user {me.get('id')})"

    # -- metadata ----------------------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        return self.execute(ME, description="me")["me"]

    def get_pipe(self, pipe_id: str | int) -> dict[str, Any]:
        """A pipe with its phases, their fields, labels and start-form fields (cached per hook)."""
        cache_key = ("pipe", str(pipe_id))
        if cache_key not in self._metadata:
            pipe = self.execute(PIPE, {"id": str(pipe_id)}, description=f"pipe {pipe_id}").get("pipe")
            if not pipe:
                raise CrmNotFoundError(f"pipe {pipe_id} not found", service="pipefy")
            self._metadata[cache_key] = pipe
        return self._metadata[cache_key]

    def get_phase(self, phase_id: str | int) -> dict[str, Any]:
        phase = self.execute(PHASE, {"id": str(phase_id)}, description=f"phase {phase_id}").get("phase")
        if not phase:
            raise CrmNotFoundError(f"phase {phase_id} not found", service="pipefy")
        return phase

    def pipe_fields(self, pipe_id: str | int) -> list[dict[str, Any]]:
        pipe = self.get_pipe(pipe_id)
        fields = list(pipe.get("start_form_fields") or [])
        for phase in pipe.get("phases") or []:
            fields.extend(phase.get("fields") or [])
        return fields

    def resolve_field(self, fields: list[dict[str, Any]], key: str, where: str) -> dict[str, Any]:
        """A field by id or by label (case-insensitive); the error lists what exists."""
        for field in fields:
            if key in (field.get("id"), field.get("internal_id")):
                return field
        matches = [f for f in fields if str(f.get("label", "")).lower() == str(key).lower()]
        if len(matches) == 1:
            return matches[0]
        known = sorted({str(f.get("label")) for f in fields})
        if matches:
            raise CrmInputError(f"{where}: field label {key!r} is ambiguous; use its id ({[m['id'] for m in matches]})")
        raise CrmInputError(f"{where}: unknown field {key!r}; known fields: {', '.join(known)}")

    def key_value(self, fields_meta: list[dict[str, Any]], values: dict[str, Any], key_field: str, where: str
                  ) -> tuple[dict[str, Any], str]:
        """The key field's metadata and its value in ``values`` (keyed by id or label), as Pipefy stores it
        (the form ``findCards`` / ``findRecords`` match on)."""
        key_meta = self.resolve_field(fields_meta, key_field, where)
        for name, value in values.items():
            if self.resolve_field(fields_meta, name, where)["id"] == key_meta["id"]:
                if value in (None, ""):
                    break
                converted = to_pipefy_value(key_meta, value)
                return key_meta, converted if isinstance(converted, str) else str(converted)
        raise CrmInputError(f"{where}: key field {key_field!r} has no value among the fields given")

    def resolve_phase(self, pipe_id: str | int, phase: str | int) -> dict[str, Any]:
        phases = self.get_pipe(pipe_id).get("phases") or []
        for item in phases:
            if str(phase) == str(item["id"]) or str(phase).lower() == str(item["name"]).lower():
                return item
        raise CrmInputError(
            f"pipe {pipe_id}: unknown phase {phase!r}; phases: {', '.join(p['name'] for p in phases)}"
        )

    # -- cards -------------------------------------------------------------------------------------
    def get_card(self, card_id: str | int) -> dict[str, Any]:
        card = self.execute(CARD, {"id": str(card_id)}, description=f"card {card_id}").get("card")
        if not card:
            raise CrmNotFoundError(f"card {card_id} not found", service="pipefy")
        return card

    def iter_pipe_cards(self, pipe_id: str | int, updated_from: datetime | None = None,
                        updated_to: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Cards of a pipe (allCards), optionally those updated in [updated_from, updated_to)."""
        conditions = []
        if updated_from is not None:
            conditions.append({"field": "updated_at", "operator": "gte", "value": _iso(updated_from)})
        if updated_to is not None:
            conditions.append({"field": "updated_at", "operator": "lt", "value": _iso(updated_to)})
        variables: dict[str, Any] = {"pipeId": str(pipe_id)}
        if conditions:
            variables["filter"] = {**conditions[0], "AND": conditions[1:]} if len(conditions) > 1 else conditions[0]
        yield from self.paginate(ALL_CARDS, variables, ["allCards"])

    def iter_phase_cards(self, phase_id: str | int) -> Iterator[dict[str, Any]]:
        yield from self.paginate(PHASE_CARDS, {"id": str(phase_id)}, ["phase", "cards"])

    def find_cards(self, pipe_id: str | int, field_id: str, value: Any) -> list[dict[str, Any]]:
        """Cards whose field equals ``value`` exactly (Pipefy's findCards is case-sensitive)."""
        search = {"fieldId": field_id, "fieldValue": str(value)}
        return list(self.paginate(FIND_CARDS, {"pipeId": str(pipe_id), "search": search}, ["findCards"]))

    def _fields_attributes(self, fields_meta: list[dict[str, Any]], values: dict[str, Any], where: str
                           ) -> list[dict[str, Any]]:
        out = []
        for key, value in values.items():
            field = self.resolve_field(fields_meta, key, where)
            out.append({"field_id": field["id"], "field_value": to_pipefy_value(field, value)})
        return out

    def create_card(self, pipe_id: str | int, title: str | None = None, fields: dict[str, Any] | None = None,
                    phase_id: str | int | None = None, key_field: str | None = None,
                    **card_attributes: Any) -> dict[str, Any]:
        """Create a card. With ``key_field`` (id or label), a create whose answer was lost is looked up
        by that field's value instead of being sent again, so nothing is created twice."""
        fields = dict(fields or {})
        meta = self.pipe_fields(pipe_id)
        attributes = self._fields_attributes(meta, fields, f"pipe {pipe_id}")
        card_input: dict[str, Any] = {"pipe_id": str(pipe_id), "fields_attributes": attributes, **card_attributes}
        if title is not None:
            card_input["title"] = title
        if phase_id is not None:
            card_input["phase_id"] = str(phase_id)
        lookup = None
        if key_field:
            key_meta, key_value = self.key_value(meta, fields, key_field, f"pipe {pipe_id}")

            def lookup() -> dict[str, Any] | None:
                found = self.find_cards(pipe_id, key_meta["id"], key_value)
                return found[0] if found else None

        def create() -> dict[str, Any]:
            return self._post_once(CREATE_CARD, {"input": card_input}, "write")["createCard"]["card"]

        try:
            return create_safely(create, lookup=lookup, description=f"createCard in pipe {pipe_id}",
                                 stats=self.limiter.stats)
        except CrmApiError as err:
            raise named_error(err, f"createCard in pipe {pipe_id}") from None

    def update_card(self, card_id: str | int, *, pipe_id: str | int | None = None,
                    fields: dict[str, Any] | None = None, **card_attributes: Any) -> dict[str, Any]:
        """Update card-level attributes (updateCard) and custom fields (updateFieldsValues, 30 per call)."""
        result: dict[str, Any] = {"id": str(card_id)}
        if card_attributes:
            data = self.execute(UPDATE_CARD, {"input": {"id": str(card_id), **card_attributes}}, write=True,
                                description=f"updateCard {card_id}")
            result.update(data["updateCard"]["card"])
        if fields:
            if pipe_id is None:
                pipe_id = self.get_card(card_id)["pipe"]["id"]
            meta = self.pipe_fields(pipe_id)
            values = []
            for key, value in fields.items():
                field = self.resolve_field(meta, key, f"card {card_id}")
                values.append({"fieldId": field["id"], "value": to_pipefy_value(field, value)})
            for start in range(0, len(values), UPDATE_FIELDS_BATCH):
                batch = values[start : start + UPDATE_FIELDS_BATCH]
                data = self.execute(UPDATE_FIELDS_VALUES, {"input": {"nodeId": str(card_id), "values": batch}},
                                    write=True, description=f"updateFieldsValues {card_id}")
                outcome = data["updateFieldsValues"]
                if not outcome.get("success"):
                    problems = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in outcome.get("userErrors") or [])
                    raise CrmValidationError(f"card {card_id}: fields not updated: {problems}", service="pipefy")
        return result

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
            return self._post_once(MOVE_CARD, move_input, "write")["moveCardToPhase"]["card"]

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
        data = self.execute(DELETE_CARD, {"input": {"id": str(card_id)}}, write=True,
                            description=f"delete card {card_id}")
        return bool((data.get("deleteCard") or {}).get("success"))

    def create_comment(self, card_id: str | int, text: str) -> dict[str, Any]:
        data = create_safely(  # no way to look a comment up: sent again only when refused before it ran
            lambda: self._post_once(CREATE_COMMENT, {"input": {"card_id": str(card_id), "text": text}}, "write"),
            lookup=None, description=f"createComment on card {card_id}", stats=self.limiter.stats)
        return data["createComment"]["comment"]

    # -- tables ------------------------------------------------------------------------------------
    def get_table(self, table_id: str | int) -> dict[str, Any]:
        cache_key = ("table", str(table_id))
        if cache_key not in self._metadata:
            table = self.execute(TABLE, {"id": str(table_id)}, description=f"table {table_id}").get("table")
            if not table:
                raise CrmNotFoundError(f"table {table_id} not found", service="pipefy")
            self._metadata[cache_key] = table
        return self._metadata[cache_key]

    def iter_table_records(self, table_id: str | int) -> Iterator[dict[str, Any]]:
        yield from self.paginate(TABLE_RECORDS, {"id": str(table_id)}, ["table_records"])

    def find_table_records(self, table_id: str | int, field_id: str, value: Any) -> list[dict[str, Any]]:
        """Records whose field equals ``value`` exactly (findRecords)."""
        variables = {"tableId": str(table_id), "fieldId": str(field_id), "fieldValue": str(value)}
        return list(self.paginate(FIND_RECORDS, variables, ["findRecords"]))

    def create_table_record(self, table_id: str | int, title: str | None = None,
                            fields: dict[str, Any] | None = None, key_field: str | None = None) -> dict[str, Any]:
        """Create a database-table record. With ``key_field`` (id or label, its value in ``fields``), a
        create whose answer was lost is looked up (findRecords) instead of being sent again."""
        fields = dict(fields or {})
        meta = self.get_table(table_id)["table_fields"]
        attributes = self._fields_attributes(meta, fields, f"table {table_id}")
        record_input: dict[str, Any] = {"table_id": str(table_id), "fields_attributes": attributes}
        if title is not None:
            record_input["title"] = title
        lookup = None
        if key_field:
            key_meta, key_value = self.key_value(meta, fields, key_field, f"table {table_id}")

            def lookup() -> dict[str, Any] | None:
                found = self.find_table_records(table_id, key_meta["id"], key_value)
                return found[0] if found else None

        def create() -> dict[str, Any]:
            data = self._post_once(CREATE_TABLE_RECORD, {"input": record_input}, "write")
            return data["createTableRecord"]["table_record"]

        try:
            return create_safely(create, lookup=lookup, description=f"createTableRecord in table {table_id}",
                                 stats=self.limiter.stats)
        except CrmApiError as err:
            raise named_error(err, f"createTableRecord in table {table_id}") from None

    def update_table_record(self, record_id: str | int, *, table_id: str | int | None = None,
                            fields: dict[str, Any] | None = None, **attributes: Any) -> dict[str, Any]:
        """Update a record's attributes (updateTableRecord) and fields (setTableRecordFieldValue each)."""
        if attributes:
            self.execute(UPDATE_TABLE_RECORD, {"input": {"id": str(record_id), **attributes}}, write=True,
                         description=f"updateTableRecord {record_id}")
        if fields:
            if table_id is None:
                raise CrmInputError(f"record {record_id}: pass table_id to update fields by label")
            meta = self.get_table(table_id)["table_fields"]
            for key, value in fields.items():
                field = self.resolve_field(meta, key, f"table {table_id}")
                self.set_table_record_field_value(record_id, field["id"], to_pipefy_value(field, value))
        return {"id": str(record_id)}

    def set_table_record_field_value(self, record_id: str | int, field_id: str, value: Any) -> None:
        self.execute(SET_TABLE_RECORD_FIELD,
                     {"input": {"table_record_id": str(record_id), "field_id": field_id, "value": value}},
                     write=True, description=f"setTableRecordFieldValue {record_id}")

    def upload_attachment(self, organization_id: str, file_name: str, content: bytes,
                          content_type: str = "application/octet-stream") -> str:
        """Upload bytes through a presigned URL; returns the storage path to put in an attachment field."""
        data = self.execute(CREATE_PRESIGNED_URL, {
            "organizationId": organization_id, "fileName": file_name, "contentType": content_type,
            "contentLength": len(content)}, write=True, description=f"presigned URL for {file_name}")
        url = data["createPresignedUrl"]["url"]
        try:
            resp = requests.put(url, data=content, headers={"Content-Type": content_type}, timeout=self.timeout)
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
        data = self.execute(DELETE_TABLE_RECORD, {"input": {"id": str(record_id)}}, write=True,
                            description=f"delete record {record_id}")
        return bool((data.get("deleteTableRecord") or {}).get("success"))


def _token_body(resp: Any) -> dict[str, Any]:
    """A token endpoint's JSON answer; a page that is not JSON is a retryable error with its real status."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not body.get("access_token"):
        problem = "the answer holds no access_token" if isinstance(body, dict) else http.not_json(
            resp.content, resp.headers.get("content-type"))
        raise CrmTransientApiError(f"token endpoint: {problem}", service="pipefy", status=resp.status_code)
    return body


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def web_url_for(api_url: str) -> str:
    """Pipefy's web app for an API URL: app.pipefy.com for Pipefy's cloud; otherwise the API URL
    without its ``/graphql`` path (a single-tenant domain, or the sandbox's ``/pipefy`` base)."""
    parsed = urlparse(api_url)
    if (parsed.hostname or "").lower() in ("api.pipefy.com", "app.pipefy.com"):
        return WEB_URL
    base = api_url.split("?", 1)[0].rstrip("/")
    if base.endswith("/graphql"):
        base = base[: -len("/graphql")]
    return base


def card_url(card_id: str | int, web_url: str = WEB_URL) -> str:
    """The card as people open it: ``<web>/open-cards/<id>``."""
    return f"{web_url}/open-cards/{card_id}"


def pipe_url(pipe_id: str | int, web_url: str = WEB_URL) -> str:
    """The pipe as people open it: ``<web>/pipes/<id>``."""
    return f"{web_url}/pipes/{pipe_id}"


def table_url(table_id: str | int, web_url: str = WEB_URL) -> str:
    """A database table as people open it: ``<web>/database_v2/tables/<id>``."""
    return f"{web_url}/database_v2/tables/{table_id}"


class PipefyAsyncHook(PipefyHook):
    """The async twin for triggers: httpx, ``await``-ed rate limiting, never blocking the event loop.

    :param pipefy_conn_id: the ``pipefy`` connection to use.
    """

    async def _asettings(self) -> dict[str, Any]:
        if "settings" not in self.__dict__:
            conn = await self.aget_connection(self.pipefy_conn_id)
            self.__dict__["settings"] = self.read_settings(conn)
        if "limiter" not in self.__dict__:
            # building the limiter may open the file store: keep that I/O off the loop
            limiter = await asyncio.to_thread(lambda: PipefyHook.limiter.func(self))  # type: ignore[attr-defined]
            self.__dict__["limiter"] = limiter
        return self.__dict__["settings"]

    async def _abearer(self, client: httpx.AsyncClient, force_refresh: bool = False) -> str:
        s = await self._asettings()
        if not s["client_id"]:
            return s["token"]
        if force_refresh or not self._token or time.time() > self._token_expires - 60:
            try:
                resp = await client.post(s["oauth_token_url"], data={
                    "grant_type": "client_credentials", "client_id": s["client_id"],
                    "client_secret": s["client_secret"]})
            except httpx.HTTPError as err:
                raise CrmTransientApiError(f"token endpoint: {http.failure_text(err)}", service="pipefy") from None
            if resp.status_code >= 500:
                raise CrmTransientApiError("token endpoint error", service="pipefy", status=resp.status_code)
            if resp.status_code != 200:
                raise CrmAuthError(f"service account token refused for connection {self.pipefy_conn_id!r}",
                                   service="pipefy", status=resp.status_code)
            body = _token_body(resp)
            self._token, self._token_expires = body["access_token"], time.time() + float(body.get("expires_in") or 3600)
        return str(self._token)

    async def aexecute(self, document: DocumentNode, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a (read) document, retried in place on transient failures as the sync hook's reads are."""
        await self._asettings()
        return await acall_with_retries(lambda: self._aexecute_once(document, variables), idempotent=True,
                                        description="pipefy request", stats=self.limiter.stats)

    async def _aexecute_once(self, document: DocumentNode, variables: dict[str, Any] | None) -> dict[str, Any]:
        s = await self._asettings()
        await self.limiter.before_request_async(kind="read")
        body = {"query": query_text(document), "variables": variables or {}}
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for attempt in (1, 2):
                headers = {"Authorization": f"Bearer {await self._abearer(client, force_refresh=attempt == 2)}"}
                resp = await http.asend(client, "POST", s["api_url"], what="POST graphql", service="pipefy",
                                        json=body, headers=headers)
                await asyncio.to_thread(self.limiter.after_response, resp.status_code, resp.headers)
                if resp.status_code == 401 and attempt == 1 and s["client_id"]:
                    continue
                break
        try:
            return self._parse(resp.status_code, resp.content, resp.headers.get("content-type"))
        except CrmRateLimitError:
            if resp.status_code != 429:
                await asyncio.to_thread(self.limiter.after_response, 429, resp.headers)
            raise

    async def aget_card(self, card_id: str | int) -> dict[str, Any]:
        card = (await self.aexecute(CARD, {"id": str(card_id)})).get("card")
        if not card:
            raise CrmNotFoundError(f"card {card_id} not found", service="pipefy")
        return card

    async def aphase_cards(self, phase_id: str | int, limit: int = 500) -> list[dict[str, Any]]:
        cards: list[dict[str, Any]] = []
        after = None
        while len(cards) < limit:
            data = await self.aexecute(PHASE_CARDS, {"id": str(phase_id), "first": PAGE_SIZE, "after": after})
            connection = (data.get("phase") or {}).get("cards") or {}
            cards += [edge["node"] for edge in connection.get("edges") or []]
            info = connection.get("pageInfo") or {}
            if not info.get("hasNextPage"):
                break
            after = info.get("endCursor")
        return cards
