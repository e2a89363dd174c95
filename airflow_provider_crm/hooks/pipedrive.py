"""Pipedrive (REST) hook: connection, auth, rate limit, envelopes, pagination, entities, custom fields."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

import httpx
import requests
from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_crm.common import connection_form, http, jsoncodec
from airflow_provider_crm.common.errors import (
    CrmApiError,
    CrmAuthError,
    CrmConfigError,
    CrmInputError,
    CrmNotFoundError,
    CrmPermanentApiError,
    CrmPermissionError,
    CrmPlanLimitError,
    CrmRateLimitError,
    CrmTransientApiError,
    CrmValidationError,
)
from airflow_provider_crm.common.ratelimit import (
    PIPEDRIVE_BURST,
    PIPEDRIVE_PLAN_ALIASES,
    RateLimiter,
    build_limiter,
    normalise_pipedrive_plan,
    pipedrive_token_cost,
)
from airflow_provider_crm.common.readahead import read_ahead
from airflow_provider_crm.common.retry import acall_with_retries, call_with_retries
from airflow_provider_crm.common.settings import ConnectionReader
from airflow_provider_crm.common.writes import create_safely
from airflow_provider_crm.get_provider_info import PIPEDRIVE_CONN_FIELDS, PIPEDRIVE_UI_FIELD_BEHAVIOUR

DEFAULT_BASE_URL = "https://api.pipedrive.com"
DEFAULT_OAUTH_TOKEN_URL = "https://oauth.pipedrive.com/oauth/token"
MAX_PAGE = 500


@dataclass(frozen=True)
class Entity:
    """What the hook knows about one Pipedrive entity.

    :param name: the entity's path segment (``deals``).
    :param version: ``v1`` or ``v2``: the API version the hook uses for it.
    :param id_type: ``int`` or ``str`` (leads have UUIDs).
    :param pagination: ``cursor`` (v2), ``offset`` (v1) or ``none`` (one answer holds every record).
    :param filters: list filters the endpoint accepts (``updated_since``, ``status``, ``sort_by`` ...).
    :param search: whether ``/<entity>/search`` exists (v2).
    :param fields_endpoint: the field-definitions endpoint (custom fields), if any.
    :param read_only: no create, update or delete through this provider.
    :param web_path: path of a record's page in the web app (``deal`` -> ``/deal/<id>``).
    :param archived: a separate list of archived records exists (``/deals/archived``).
    """

    name: str
    version: str  # "v1" | "v2"
    id_type: type  # int or str (UUID)
    pagination: str  # "cursor" | "offset" | "none"
    filters: frozenset[str] = frozenset()
    search: bool = False
    fields_endpoint: str | None = None
    read_only: bool = False
    web_path: str | None = None
    archived: bool = False

    @property
    def path(self) -> str:
        return f"/{self.name}"

    @property
    def incremental(self) -> bool:
        """The list can be filtered by update time (``updated_since``)."""
        return "updated_since" in self.filters

    @property
    def server_side_until(self) -> bool:
        """The API applies ``updated_until`` itself; otherwise the end is applied to ``update_time`` here."""
        return "updated_until" in self.filters


_SORT = frozenset({"sort_by", "sort_direction"})
_INCREMENTAL = frozenset({"updated_since", "updated_until", "ids", "filter_id"}) | _SORT
ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity("deals", "v2", int, "cursor",
               _INCREMENTAL | {"status", "pipeline_id", "stage_id", "owner_id", "person_id", "org_id"}, True,
               "dealFields", web_path="deal", archived=True),
        Entity("persons", "v2", int, "cursor", _INCREMENTAL | {"owner_id", "org_id"}, True, "personFields",
               web_path="person"),
        Entity("organizations", "v2", int, "cursor", _INCREMENTAL | {"owner_id"}, True, "organizationFields",
               web_path="organization"),
        Entity("activities", "v2", int, "cursor",
               _INCREMENTAL | {"deal_id", "lead_id", "person_id", "org_id", "owner_id", "done"}, False,
               "activityFields", web_path="activity"),
        # v2 products take updated_since but no updated_until: the end is applied to update_time here
        Entity("products", "v2", int, "cursor", _SORT | {"updated_since", "ids", "owner_id", "filter_id"}, True,
               "productFields", web_path="product"),
        Entity("pipelines", "v2", int, "cursor", _SORT, read_only=True),
        Entity("stages", "v2", int, "cursor", _SORT | {"pipeline_id"}, read_only=True),
        Entity("leads", "v1", str, "offset",
               frozenset({"updated_since", "sort", "owner_id", "person_id", "organization_id", "filter_id"}), True,
               "dealFields", web_path="leads/inbox"),
        Entity("notes", "v1", int, "offset",
               frozenset({"updated_since", "sort", "deal_id", "person_id", "org_id", "lead_id", "user_id"})),
        Entity("users", "v1", int, "none", read_only=True),
    )
}
# the web app's list page of an entity (extra links of exports and upserts)
WEB_LISTS = {"deals": "deals/list", "persons": "persons/list", "organizations": "organizations/list",
             "activities": "activities/list", "products": "products/list", "leads": "leads/inbox"}
# standard fields a write may carry besides those the field definitions list
_STANDARD_FIELDS = frozenset({
    "title", "name", "value", "currency", "status", "stage_id", "pipeline_id", "owner_id", "person_id", "org_id",
    "organization_id", "emails", "phones", "visible_to", "label_ids", "labels", "expected_close_date", "probability",
    "lost_reason", "won_time", "lost_time", "close_time", "is_archived", "archive_time", "due_date", "due_time",
    "duration", "deal_id", "lead_id", "project_id", "type", "done", "subject", "note", "public_description",
    "location", "busy", "participants", "attendees", "content", "code", "description", "unit", "tax", "prices",
    "category", "address", "first_name", "last_name", "marketing_status", "birthday", "job_title", "postal_address",
    "notes", "add_time", "update_time", "user_id", "pinned_to_deal_flag", "pinned_to_person_flag",
})
_CUSTOM_FIELDS_IN_V2 = {"deals", "persons", "organizations", "products", "activities"}


def rotated_token_variable(conn_id: str) -> str:
    """The Airflow Variable where a rotated OAuth refresh token of ``conn_id`` is kept."""
    return f"pipedrive_oauth_refresh_token__{conn_id}"


def _read_rotated_refresh_token(conn_id: str) -> str | None:
    try:
        from airflow.sdk import Variable

        value = Variable.get(rotated_token_variable(conn_id), default=None)
    except Exception:  # no API server to ask (outside a task), or no such variable
        return None
    return str(value) if value else None


def _mask(secret: str) -> None:
    """Have Airflow redact ``secret`` from task logs."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except Exception:  # logging not configured by Airflow (plain Python use)
        pass


def entity_info(name: str) -> Entity:
    if name not in ENTITIES:
        raise CrmInputError(f"unknown Pipedrive entity {name!r}; known: {', '.join(sorted(ENTITIES))}")
    return ENTITIES[name]


def pipedrive_error(status: int, body: Any, what: str, not_json: str | None = None) -> CrmApiError:
    """The typed exception for an error answer; keeps ``error`` and ``error_info``.

    :param not_json: what the body was instead of JSON (see :func:`http.not_json`), if it was not JSON.
    """
    body = body if isinstance(body, dict) else {}
    message = str(body.get("error") or f"HTTP {status}")
    if body.get("error_info"):
        message += f" ({body['error_info']})"
    if not_json:
        message += f"; {not_json}"
    message = f"{what}: {message}"
    code = body.get("code") or body.get("errorCode")
    code = str(code) if code is not None else None
    kwargs: dict[str, Any] = {"service": "pipedrive", "status": status, "code": code}
    if status == 429:
        return CrmRateLimitError(message, **kwargs)
    if status >= 500 or status < 400:  # < 400: an answer that is no envelope (an HTML page, cut-short JSON)
        return CrmTransientApiError(message, **kwargs)
    if status == 401:
        return CrmAuthError(message, **kwargs)
    if status == 402 or (status == 403 and code and ("capping" in code or "limit" in code)):
        return CrmPlanLimitError(message, **kwargs)
    if status == 403:
        return CrmPermissionError(message, **kwargs)
    if status in (404, 410):
        return CrmNotFoundError(message, **kwargs)
    if status in (400, 422):
        return CrmValidationError(message, **kwargs)
    return CrmPermanentApiError(message, **kwargs)


def _envelope(status: int, content: bytes, content_type: str | None, what: str) -> dict[str, Any]:
    """The decoded envelope of a successful answer, else the typed error (with the answer's real
    status: an HTML page answered with HTTP 200 is reported as such, not as a 502)."""
    try:
        body = jsoncodec.loads(content)
    except ValueError:
        body = None
    if status >= 400 or not isinstance(body, dict) or body.get("success") is False:
        not_json = http.not_json(content, content_type) if not isinstance(body, dict) else None
        raise pipedrive_error(status, body, what, not_json)
    return body


class FieldMap:
    """Custom fields of one entity both ways: hash key <-> name, option id <-> label."""

    def __init__(self, entity: str, definitions: list[dict[str, Any]]) -> None:
        self.entity = entity
        self.definitions = definitions
        self.custom = [d for d in definitions if _is_custom(d)]
        self.by_key = {d["key"]: d for d in self.custom}
        self.by_name = {str(d["name"]).lower(): d for d in self.custom}
        self.standard_keys = {str(d.get("key")) for d in definitions if not _is_custom(d)}
        # decoding runs for every custom value of every exported record: look-ups, not scans
        self._names = {key: str(d["name"]) for key, d in self.by_key.items()}
        self._labels = {key: {o["id"]: o["label"] for o in d.get("options") or []} for key, d in self.by_key.items()}
        self._sets = {key for key, d in self.by_key.items() if d.get("field_type") == "set"}

    def key_for(self, name: str) -> str:
        if name in self.by_key:
            return name
        found = self.by_name.get(name.lower())
        if found is None:
            import difflib

            close = difflib.get_close_matches(name.lower(), list(self.by_name), n=3)
            hint = f"; did you mean {', '.join(repr(self.by_name[c]['name']) for c in close)}?" if close else ""
            raise CrmInputError(
                f"{self.entity}: unknown field {name!r}: neither a standard field nor a custom field name{hint}"
            )
        return str(found["key"])

    def encode(self, key: str, value: Any) -> Any:
        """A value for writing, by field type: numbers from text, dates as ISO, option labels as ids."""
        definition = self.by_key[key]
        options = definition.get("options") or []
        if value is None:
            return None
        ftype = definition.get("field_type")
        where = f"{self.entity}: field {definition['name']!r} ({ftype})"
        if ftype in ("double", "int", "monetary"):
            amount = value.get("value") if isinstance(value, dict) else value
            try:
                number = float(str(amount).strip()) if not isinstance(amount, bool) else None
            except ValueError:
                number = None
            if number is None:
                raise CrmInputError(f"{where}: {amount!r} is not a number")
            if ftype == "monetary":
                currency = value.get("currency") if isinstance(value, dict) else None
                return {"value": number, "currency": currency or "USD"}
            return int(number) if ftype == "int" and number.is_integer() else number
        if ftype == "date":
            from datetime import date, datetime

            if isinstance(value, datetime):
                return value.date().isoformat()
            if isinstance(value, date):
                return value.isoformat()
            try:
                return date.fromisoformat(str(value)[:10]).isoformat()
            except ValueError:
                raise CrmInputError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None
        if ftype in ("varchar", "text", "varchar_auto", "phone", "address") and not isinstance(value, (dict, list)):
            return str(value)
        if not options:
            return value
        by_label = {str(o["label"]).lower(): o["id"] for o in options}
        ids = {o["id"] for o in options}

        def one(item: Any) -> Any:
            if item in ids:
                return item
            if str(item).lower() in by_label:
                return by_label[str(item).lower()]
            raise CrmInputError(
                f"{self.entity}: field {definition['name']!r}: {item!r} is not one of its options "
                f"{[o['label'] for o in options]}"
            )

        if isinstance(value, (list, tuple)):
            return [one(v) for v in value]
        return one(value)

    def decode(self, key: str, value: Any) -> Any:
        """A read value with option ids replaced by their labels (sets: a list of labels)."""
        options = self._labels.get(key)
        if not options or value is None:
            return value
        if isinstance(value, list):
            return [options.get(v, v) for v in value]
        if isinstance(value, str) and "," in value and key in self._sets:
            return [options.get(int(v) if v.isdigit() else v, v) for v in value.split(",")]
        return options.get(value, value)

    def rename_record(self, record: dict[str, Any], labels: bool = True) -> dict[str, Any]:
        """Custom fields under their names (v2 ``custom_fields`` or v1 top-level hash keys)."""
        out = dict(record)
        values: dict[str, Any] = out.pop("custom_fields", None) or {}
        top_level = self._names.keys() & out.keys()  # v1 answers put custom fields beside the standard ones
        if top_level:
            values = {**values, **{key: out.pop(key) for key in top_level}}
        names, decode = self._names, self.decode
        for key, value in values.items():
            out[names.get(key, key)] = decode(key, value) if labels else value
        return out


def _is_custom(definition: dict[str, Any]) -> bool:
    if "is_custom_field" in definition:
        return bool(definition["is_custom_field"])
    if "edit_flag" in definition:
        return bool(definition["edit_flag"])
    key = str(definition.get("key") or definition.get("field_code") or "")
    return len(key) == 40


class PipedriveHook(BaseHook):
    """Talks to Pipedrive's REST API (v2 for core entities, v1 where v2 has nothing) through one connection.

    The API token travels in the ``x-api-token`` header, never in a URL. Every request passes the
    shared rate limiter (burst, search, daily POST/PUT allowance and token budget).

    :param pipedrive_conn_id: the ``pipedrive`` connection to use.
    :param timeout: seconds to wait for an answer.
    """

    conn_name_attr = "pipedrive_conn_id"
    default_conn_name = "pipedrive_default"
    conn_type = "pipedrive"
    hook_name = "Pipedrive"

    def __init__(self, pipedrive_conn_id: str = default_conn_name, timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipedrive_conn_id = pipedrive_conn_id
        self.timeout = timeout
        self._access_token: str | None = None
        self._access_expires = 0.0
        self._refresh_token: str | None = None
        self._auth_lock = threading.Lock()
        self._field_maps: dict[str, FieldMap] = {}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        return connection_form.form_widgets(PIPEDRIVE_CONN_FIELDS)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return connection_form.field_behaviour(PIPEDRIVE_UI_FIELD_BEHAVIOUR)

    # -- settings ----------------------------------------------------------------------------------
    @cached_property
    def settings(self) -> dict[str, Any]:
        """The connection, read and validated. Errors name the connection and field, never a secret."""
        return self.read_settings(self.get_connection(self.pipedrive_conn_id))

    def read_settings(self, conn: Any) -> dict[str, Any]:
        reader = ConnectionReader.for_connection(self.pipedrive_conn_id, "pipedrive", conn)
        token = (conn.password or "").strip() or None
        oauth = {name: reader.text(name) for name in ("client_id", "client_secret", "refresh_token")}
        if any(oauth.values()) and not all(oauth.values()):
            missing = next(name for name, value in oauth.items() if not value)
            raise CrmConfigError(self.pipedrive_conn_id, missing,
                                 "is required for OAuth (client_id, client_secret and refresh_token go together)")
        if not token and not oauth["client_id"]:
            raise CrmConfigError(self.pipedrive_conn_id, "password",
                                 "is empty: set an API token, or OAuth client_id, client_secret and refresh_token")
        domain = reader.text("company_domain")
        if domain and not domain.replace("-", "").isalnum():
            raise CrmConfigError(self.pipedrive_conn_id, "company_domain",
                                 f"must be the subdomain only (like 'acme'), got {domain!r}")
        host = (conn.host or "").strip()
        if host and "://" not in host:
            host = f"https://{host}"
        default_base = f"https://{domain}.pipedrive.com" if domain else DEFAULT_BASE_URL
        plans = (*PIPEDRIVE_BURST, *PIPEDRIVE_PLAN_ALIASES)
        return {
            "host_given": bool(host),
            "base_url": reader.url("host", host, default_base),
            "token": token,
            **oauth,
            "auth_type": "oauth" if oauth["client_id"] else "token",
            "oauth_token_url": reader.url("oauth_token_url", reader.text("oauth_token_url"), DEFAULT_OAUTH_TOKEN_URL),
            "company_domain": domain,
            "plan": normalise_pipedrive_plan(reader.choice("plan", plans, "lite")),
            "seats": reader.positive_int("seats") or 1,
            "requests_per_2s": reader.positive_int("requests_per_2s"),
            "daily_token_budget": reader.positive_int("daily_token_budget"),
            "rate_limit_store": reader.store(),
        }

    @cached_property
    def session(self) -> requests.Session:
        session = http.pooled_session()
        session.headers.update({"Accept": "application/json"})
        return session

    @cached_property
    def limiter(self) -> RateLimiter:
        s = self.settings
        key = s["token"] if s["auth_type"] == "token" else f"oauth:{s['client_id']}:{s['refresh_token']}"
        return build_limiter(
            "pipedrive", key, plan=s["plan"], auth_type=s["auth_type"], seats=s["seats"], store=s["rate_limit_store"],
            overrides={"requests_per_2s": s["requests_per_2s"], "daily_token_budget": s["daily_token_budget"]},
            conn_id=self.pipedrive_conn_id,
        )

    def get_conn(self) -> requests.Session:
        return self.session

    @property
    def web_url(self) -> str:
        """The web app's address for people: the company domain, else a company host (``host`` or the
        OAuth answer's ``api_domain``), else ``https://app.pipedrive.com``, which opens the signed-in
        user's company. A base URL outside pipedrive.com (the sandbox) is its own web address."""
        domain = self.settings["company_domain"]
        if domain:
            return f"https://{domain}.pipedrive.com"
        base = self.settings["base_url"].rstrip("/")
        netloc = urlparse(base).netloc.lower()
        if netloc.endswith(".pipedrive.com") and netloc.split(".")[0] not in ("api", "oauth", "app"):
            return f"https://{netloc}"
        if netloc and netloc != "pipedrive.com" and not netloc.endswith(".pipedrive.com"):
            return base
        return "https://app.pipedrive.com"

    def record_url(self, entity: str, record_id: Any) -> str | None:
        info = ENTITIES.get(entity)
        return f"{self.web_url}/{info.web_path}/{record_id}" if info and info.web_path else None

    def list_url(self, entity: str) -> str | None:
        """The web app's list of an entity's records (``/deals/list``), or None when it has none."""
        path = WEB_LISTS.get(entity)
        return f"{self.web_url}/{path}" if path else None

    # -- auth --------------------------------------------------------------------------------------
    def _auth_headers(self, force_refresh: bool = False) -> dict[str, str]:
        s = self.settings
        if s["auth_type"] == "token":
            return {"x-api-token": s["token"]}
        with self._auth_lock:
            if force_refresh or not self._access_token or time.time() > self._access_expires - 60:
                self._refresh_access_token()
            return {"Authorization": f"Bearer {self._access_token}"}

    def _refresh_candidates(self) -> list[str]:
        """Refresh tokens to try, newest first: the one rotated in this task, the one an earlier task
        stored in the rotation Variable, the connection's."""
        stored = _read_rotated_refresh_token(self.pipedrive_conn_id)
        found = [t for t in (self._refresh_token, stored, self.settings["refresh_token"]) if t]
        return list(dict.fromkeys(found))

    def _refresh_access_token(self) -> None:
        s = self.settings
        resp: Any = None
        for refresh in self._refresh_candidates():
            try:
                resp = self.session.post(
                    s["oauth_token_url"], data={"grant_type": "refresh_token", "refresh_token": refresh},
                    auth=(s["client_id"], s["client_secret"]), timeout=self.timeout,
                )
            except http.TRANSPORT_ERRORS as err:
                raise CrmTransientApiError(f"OAuth endpoint: {http.failure_text(err)}",
                                           service="pipedrive") from None
            if resp.status_code in (400, 401) and refresh != s["refresh_token"]:
                continue  # a stale stored token: fall back to an older source
            self._accept_token_answer(resp, refresh)
            return
        self._accept_token_answer(resp, "")

    def _accept_token_answer(self, resp: Any, refresh: str) -> bool:
        """Take a token answer; returns True when Pipedrive rotated the refresh token (the caller stores it)."""
        s = self.settings
        if resp.status_code >= 500:
            raise CrmTransientApiError("OAuth endpoint error", service="pipedrive", status=resp.status_code)
        if resp.status_code != 200:
            raise CrmAuthError(
                f"OAuth refresh refused for connection {self.pipedrive_conn_id!r}: check client_id, client_secret "
                f"and refresh_token (a refresh token that was rotated away no longer works; the latest one is kept "
                f"in the Airflow Variable {rotated_token_variable(self.pipedrive_conn_id)!r} when tasks could "
                "store it; otherwise re-authorise the app to get a new one)",
                service="pipedrive", status=resp.status_code,
            )
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("access_token"):
            raise CrmTransientApiError(
                "OAuth endpoint: " + (http.not_json(resp.content, resp.headers.get("content-type"))
                                      if body is None else "the answer holds no access_token"),
                service="pipedrive", status=resp.status_code)
        self._access_token = str(body["access_token"])
        _mask(self._access_token)
        self._access_expires = time.time() + float(body.get("expires_in") or 3600)
        if body.get("api_domain") and not s["host_given"]:
            s["base_url"] = str(body["api_domain"]).rstrip("/")
        new_refresh = body.get("refresh_token")
        if new_refresh and new_refresh != refresh:
            _mask(str(new_refresh))
            self._refresh_token = str(new_refresh)
            self._store_rotated_refresh_token(str(new_refresh))
            return True
        return False

    def _store_rotated_refresh_token(self, new_refresh: str) -> None:
        """Refresh tokens rotate: keep the new one where the next task finds it.

        Airflow 3's task SDK gives a task no write access to connections (secrets backends and
        ``AIRFLOW_CONN_*`` variables are read-only anyway), but it may set Variables through the API
        server. The new token goes to the Variable :func:`rotated_token_variable` names (its key holds
        "token", so Airflow masks it); every Pipedrive hook tries it before the connection's
        ``refresh_token`` extra. The token itself is never logged.
        """
        key = rotated_token_variable(self.pipedrive_conn_id)
        try:
            from airflow.sdk import Variable

            Variable.set(key, new_refresh, description=(
                f"Latest OAuth refresh token of Pipedrive connection {self.pipedrive_conn_id!r}, rotated by "
                "Pipedrive and stored by airflow-provider-crm; tried before the connection's refresh_token extra."))
        except Exception as err:  # outside a task, or the API server refused
            self.log.warning(
                "Pipedrive rotated the OAuth refresh token of connection %r. It is kept for the rest of this task "
                "but could not be stored in Variable %r (%s). The connection's 'refresh_token' extra may stop "
                "working: if it does, re-authorise the Pipedrive app and put the refresh token it issues in that "
                "extra.", self.pipedrive_conn_id, key, type(err).__name__,
            )
            return
        self.log.info(
            "Pipedrive rotated the OAuth refresh token of connection %r; the new one is stored in the Airflow "
            "Variable %r and used by the next tasks. Copy it from there into the connection's 'refresh_token' "
            "extra if you manage connections elsewhere.", self.pipedrive_conn_id, key,
        )

    # -- requests ----------------------------------------------------------------------------------
    def _url(self, version: str, path: str) -> str:
        return f"{self.settings['base_url']}/api/{version}/{path.lstrip('/')}"

    def _request_once(self, method: str, version: str, path: str, params: dict[str, Any] | None,
                      json_body: Any, kind: str, lazy: bool = False) -> Any:
        cost = pipedrive_token_cost(method, path, version)
        self.limiter.before_request(kind=kind, cost=cost)
        what = f"{method} /api/{version}{path}"
        resp: requests.Response | None = None
        for attempt in (1, 2):
            # auth first: an OAuth refresh may move the base URL to the answer's api_domain
            headers = self._auth_headers(force_refresh=attempt == 2)
            resp = http.send(self.session, method, self._url(version, path), what=what, service="pipedrive",
                             timeout=self.timeout, params=params, json=json_body, headers=headers)
            self.limiter.after_response(resp.status_code, resp.headers, kind=kind)
            if resp.status_code == 401 and attempt == 1 and self.settings["auth_type"] == "oauth":
                resp.close()
                continue
            break
        assert resp is not None
        content = http.read_body(resp, what=what, service="pipedrive")
        if lazy and resp.status_code < 400:
            try:
                envelope = jsoncodec.loads_envelope(content)
            except ValueError:
                envelope = None
            if envelope is not None and envelope.success is not False:
                return envelope
        try:
            return _envelope(resp.status_code, content, resp.headers.get("content-type"), what)
        except CrmAuthError as err:  # say which connection holds the refused credentials
            err.args = (f"{err}; connection {self.pipedrive_conn_id!r}: check its API token or OAuth client",)
            raise

    def request(self, method: str, version: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, kind: str | None = None) -> dict[str, Any]:
        """One API call, retried when safe: everything but POST, and a POST refused before it ran
        (429, 503; see common/writes.py). Returns the whole envelope."""
        method = method.upper()
        kind = kind or ("write" if method in ("POST", "PUT", "PATCH") else "read")
        if method == "POST":
            return create_safely(lambda: self._request_once(method, version, path, params, json, kind),
                                 lookup=None, description=f"{method} {path}", stats=self.limiter.stats)
        return call_with_retries(
            lambda: self._request_once(method, version, path, params, json, kind),
            idempotent=method != "POST", description=f"{method} {path}", stats=self.limiter.stats,
        )

    def test_connection(self) -> tuple[bool, str]:
        try:
            me = self.request("GET", "v1", "/users/me")["data"]
        except Exception as err:
            return False, str(err)
        return True, f"Connected to Pipedrive as {me.get('email')} ({me.get('company_name') or me.get('company_domain')})"

    # -- pagination --------------------------------------------------------------------------------
    def paginate(self, version: str, path: str, params: dict[str, Any] | None = None, page_size: int = MAX_PAGE,
                 style: str | None = None) -> Iterator[dict[str, Any]]:
        """Yield items of a list endpoint: cursor pagination (v2), offset pagination (v1), or ``none``
        for the few endpoints that answer with everything at once (``/v1/users``).

        Offset pages overlap by a few items (:func:`offset_overlap`): a record deleted before the
        current offset shifts every later one down, and without the overlap the item at the page
        boundary would never be read. The previous page's last items are not yielded again; if none
        of them comes back (more deletions than the overlap between two requests),
        :class:`CrmTransientApiError` is raised rather than leaving a gap, and a retry of the task
        reads the list again. (A record entering the list before the offset shifts items the other
        way: one already read can come again; exports drop repeated ids.)"""
        style = style or ("cursor" if version == "v2" else "offset")
        if style == "none":
            yield from self.request("GET", version, path, params=params or None).get("data") or []
            return
        params = {**(params or {}), "limit": min(page_size, MAX_PAGE)}
        overlap = offset_overlap(params["limit"]) if style == "offset" else 0

        def fetch(page_params: dict[str, Any]) -> jsoncodec.Envelope:
            return call_with_retries(
                lambda: self._request_once("GET", version, path, page_params, None, "read", lazy=True),
                idempotent=True, description=f"GET {path}", stats=self.limiter.stats,
            )

        def following(page_params: dict[str, Any], envelope: jsoncodec.Envelope) -> dict[str, Any] | None:
            after = _next_page_params(style, page_params, envelope.additional_data)
            if after is not None and overlap:
                after["start"] = max(int(page_params.get("start") or 0) + 1, int(after["start"]) - overlap)
            return after

        pages = (jsoncodec.iter_items(envelope.data) for envelope in read_ahead(fetch, params, following))
        if not overlap:
            for items in pages:
                yield from items
            return
        yield from _without_overlap(pages, overlap, params["limit"], f"GET /api/{version}{path}")

    # -- entities ----------------------------------------------------------------------------------
    def field_map(self, entity: str) -> FieldMap:
        """Field definitions of an entity, fetched once per hook (task)."""
        info = entity_info(entity)
        if entity not in self._field_maps:
            definitions: list[dict[str, Any]] = []
            if info.fields_endpoint:
                version = "v2" if info.version == "v2" else "v1"
                definitions = [_normalise_definition(d) for d in
                               self.paginate(version, f"/{info.fields_endpoint}", page_size=MAX_PAGE)]
            self._field_maps[entity] = FieldMap(entity, definitions)
        return self._field_maps[entity]

    def encode_record(self, entity: str, data: dict[str, Any]) -> dict[str, Any]:
        """Data for a write: custom fields may be given by name and options by label."""
        info = entity_info(entity)
        fmap = self.field_map(entity) if info.fields_endpoint else None
        standard: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for key, value in data.items():
            if key == "custom_fields" and isinstance(value, dict):
                for ckey, cvalue in value.items():
                    assert fmap is not None
                    real = fmap.key_for(ckey)
                    custom[real] = fmap.encode(real, cvalue)
                continue
            if fmap and (key in fmap.by_key or key.lower() in fmap.by_name):
                real = fmap.key_for(key)
                custom[real] = fmap.encode(real, value)
            elif fmap and fmap.definitions and key not in _STANDARD_FIELDS and key not in fmap.standard_keys:
                fmap.key_for(key)  # raises: names the unknown field and suggests close custom-field names
            else:
                standard[key] = value
        if custom:
            if entity in _CUSTOM_FIELDS_IN_V2:
                standard["custom_fields"] = custom
            else:
                standard.update(custom)
        return standard

    def get(self, entity: str, record_id: Any) -> dict[str, Any]:
        info = entity_info(entity)
        return self.request("GET", info.version, f"{info.path}/{record_id}")["data"]

    def iter_records(self, entity: str, *, archived: bool = False, **filters: Any) -> Iterator[dict[str, Any]]:
        """Yield every record of ``entity`` matching ``filters`` (checked against the entity registry),
        page by page. ``archived=True`` reads the separate list of archived records (deals)."""
        info = entity_info(entity)
        unknown = set(filters) - info.filters - {"limit"}
        if unknown:
            raise CrmInputError(f"{entity}: unsupported filter(s) {sorted(unknown)}; supported: {sorted(info.filters)}")
        if archived and not info.archived:
            raise CrmInputError(f"{entity} have no archived list; only {[e for e in ENTITIES if ENTITIES[e].archived]}")
        params = {k: v for k, v in filters.items() if v is not None}
        path = f"{info.path}/archived" if archived else info.path
        yield from self.paginate(info.version, path, params, style=info.pagination)

    def create(self, entity: str, data: dict[str, Any], key_field: str | None = None,
               key_value: Any = None) -> dict[str, Any]:
        """Create a record. A create refused before it ran (429, 503) is sent again; one whose answer
        was lost is sent again only after a lookup by ``key_field`` (``key_value``, by default its
        value in ``data``; ``email`` finds the first of ``emails``) finds nothing, and without a key
        it is not sent again (see common/writes.py)."""
        info = entity_info(entity)
        if info.read_only:
            raise CrmInputError(f"{entity} are read-only here")
        body = self.encode_record(entity, data)
        if key_field and key_value in (None, ""):
            key_value = key_of(data, key_field)
        lookup = None
        if key_field and key_value not in (None, ""):
            field, value = key_field, key_value

            def lookup() -> dict[str, Any] | None:
                return self.find_one(entity, field, value)

        return create_safely(
            lambda: self._request_once("POST", info.version, info.path, None, body, "write")["data"],
            lookup=lookup, description=f"create {entity}", stats=self.limiter.stats,
        )

    def update(self, entity: str, record_id: Any, data: dict[str, Any]) -> dict[str, Any]:
        info = entity_info(entity)
        if info.read_only:
            raise CrmInputError(f"{entity} are read-only here")
        method = "PATCH" if info.version == "v2" else "PUT"
        if entity == "leads":
            method = "PATCH"
        return self.request(method, info.version, f"{info.path}/{record_id}", json=self.encode_record(entity, data))[
            "data"]

    def delete(self, entity: str, record_id: Any) -> Any:
        info = entity_info(entity)
        if info.read_only:
            raise CrmInputError(f"{entity} are read-only here")
        return self.request("DELETE", info.version, f"{info.path}/{record_id}")["data"]

    def search(self, entity: str, term: str, fields: str | None = None, exact_match: bool = True,
               limit: int = 10) -> list[dict[str, Any]]:
        """Items matching ``term`` (exact match is case-insensitive on Pipedrive's side)."""
        info = entity_info(entity)
        if not info.search:
            raise CrmInputError(f"{entity} cannot be searched")
        version, path = ("v2", f"/{entity}/search") if entity != "leads" else ("v2", "/leads/search")
        params: dict[str, Any] = {"term": term, "exact_match": str(exact_match).lower(), "limit": limit}
        if fields:
            params["fields"] = fields
        body = self.request("GET", version, path, params=params, kind="search")
        return [entry["item"] for entry in (body.get("data") or {}).get("items") or []]

    def find_one(self, entity: str, key: str, value: Any) -> dict[str, Any] | None:
        """The record whose ``key`` (standard field or custom field by name) equals ``value``, or None."""
        fmap = self.field_map(entity)
        is_custom = key.lower() in fmap.by_name or key in fmap.by_key
        search_field = "custom_fields" if is_custom else {"emails": "email", "phones": "phone"}.get(key, key)
        for item in self.search(entity, str(value), fields=search_field):
            record = self.get(entity, item["id"])
            if _matches(record, key, value, fmap):
                return record
        return None

    def index_by(self, entity: str, key: str) -> dict[str, dict[str, Any]]:
        """Every live record of ``entity`` by its value(s) under ``key`` (see :func:`record_keys`): one
        list call per 500 records instead of one search per looked-up value. The first record wins
        where several share a value, as :meth:`find_one` answers the first match."""
        fmap = self.field_map(entity)
        index: dict[str, dict[str, Any]] = {}
        for record in self.iter_records(entity):
            for value in record_keys(record, key, fmap):
                index.setdefault(value, record)
        return index

    # -- mail --------------------------------------------------------------------------------------
    def iter_mail_threads(self, folder: str = "inbox") -> Iterator[dict[str, Any]]:
        if folder not in ("inbox", "drafts", "sent", "archive"):
            raise CrmInputError(f"mail folder must be inbox, drafts, sent or archive; got {folder!r}")
        yield from self.paginate("v1", "/mailbox/mailThreads", {"folder": folder}, page_size=50, style="offset")

    def thread_messages(self, thread_id: Any) -> list[dict[str, Any]]:
        return self.request("GET", "v1", f"/mailbox/mailThreads/{thread_id}/mailMessages").get("data") or []


def offset_overlap(limit: int) -> int:
    """Items each offset page re-reads of the previous one: 4 % (20 of 500, 2 of 50), at least 1."""
    return max(1, limit // 25)


def _without_overlap(pages: Iterator[Iterator[Any]], overlap: int, limit: int, what: str) -> Iterator[Any]:
    """The items of overlapping offset pages, the re-read ones once (see :meth:`PipedriveHook.paginate`).

    Raises :class:`CrmTransientApiError` when a page after a full one brings back none of that page's
    last ``overlap`` items: the offsets moved by more than the overlap, so items may have been missed.
    (After a short page that says more follow, the items' offsets are unknown and nothing is checked.)
    """
    tail: set[Any] = set()  # ids of the previous page's last `overlap` items
    previous_was_full = False
    for items in pages:
        page_ids: list[Any] = []
        for item in items:
            item_id = item.get("id") if isinstance(item, dict) else None
            if item_id is None:  # nothing to recognise it by: yielded as it comes
                yield item
                continue
            page_ids.append(item_id)
            if item_id not in tail:
                yield item
        if previous_was_full and tail and tail.isdisjoint(page_ids):
            raise CrmTransientApiError(
                f"{what}: more than {overlap} records were deleted while the list was read (none of the "
                f"previous page's last {overlap} came back), so some may have been skipped; read it again "
                "(a retry of the task does)", service="pipedrive")
        tail = set(page_ids[-overlap:])
        previous_was_full = len(page_ids) >= limit


def _next_page_params(style: str, params: dict[str, Any], extra: Any) -> dict[str, Any] | None:
    """Parameters of the page after the one whose ``additional_data`` is ``extra``; None at the end."""
    extra = extra if isinstance(extra, dict) else {}
    if style == "cursor":
        cursor = extra.get("next_cursor")
        return {**params, "cursor": cursor} if cursor else None
    pagination = extra.get("pagination") or {}
    if not pagination.get("more_items_in_collection"):
        return None
    return {**params, "start": pagination.get("next_start", params.get("start", 0) + params["limit"])}


def _normalise_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """v2 field definitions say field_code/field_name; v1 say key/name."""
    out = dict(definition)
    out.setdefault("key", definition.get("field_code"))
    out.setdefault("name", definition.get("field_name"))
    return out


def match_key(value: Any) -> str:
    """How key values are compared: trimmed, case-insensitive text."""
    return str(value).strip().lower()


_EMAIL_KEYS = frozenset({"email", "emails"})
_PHONE_KEYS = frozenset({"phone", "phones"})


def normalise_key(key_field: str, value: Any) -> Any:
    """An upsert key as Pipedrive keeps it, so that the lookup, the local index, the create's own
    lookup and the record written all agree: emails trimmed and lower-cased, phones and other text
    trimmed (inner spaces of a phone are kept: Pipedrive stores them as given). ``[{"value": ...}]``
    lists (``emails``, ``phones``) give their first value."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = value[0].get("value")
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if not isinstance(value, str):
        return value
    value = value.strip()
    return value.lower() if key_field.lower() in _EMAIL_KEYS else value


def key_of(data: dict[str, Any], key_field: str) -> Any:
    """The key's value in a record to write: ``data[key_field]``, or for ``email`` / ``phone`` the first
    of ``emails`` / ``phones`` (an upsert turns the one into the other), normalised."""
    value = data.get(key_field)
    if value in (None, "") and key_field.lower() in (_EMAIL_KEYS | _PHONE_KEYS):
        plural = "emails" if key_field.lower() in _EMAIL_KEYS else "phones"
        value = data.get(plural)
    return normalise_key(key_field, value) if value not in (None, "", []) else None


def record_keys(record: dict[str, Any], key: str, fmap: FieldMap) -> list[str]:
    """The values a record holds under ``key`` (a standard field, ``email``/``emails``, ``phones`` or a
    custom field by name), as :func:`match_key` compares them."""
    if key.lower() in fmap.by_name or key in fmap.by_key:
        real = fmap.key_for(key)
        current = (record.get("custom_fields") or {}).get(real, record.get(real))
    else:
        current = record.get({"email": "emails", "phone": "phones"}.get(key, key))
    if isinstance(current, dict) and "value" in current:
        current = current["value"]
    if isinstance(current, list):  # emails / phones: [{value, primary, label}]
        return [match_key(c.get("value") if isinstance(c, dict) else c) for c in current]
    return [] if current is None else [match_key(current)]


def _matches(record: dict[str, Any], key: str, value: Any, fmap: FieldMap) -> bool:
    return match_key(value) in record_keys(record, key, fmap)


class PipedriveAsyncHook(PipedriveHook):
    """The async twin for triggers: httpx and awaited rate limiting; never blocks the event loop.

    :param pipedrive_conn_id: the ``pipedrive`` connection to use.
    """

    async def _asettings(self) -> dict[str, Any]:
        if "settings" not in self.__dict__:
            conn = await self.aget_connection(self.pipedrive_conn_id)
            self.__dict__["settings"] = self.read_settings(conn)
        if "limiter" not in self.__dict__:
            self.__dict__["limiter"] = await asyncio.to_thread(
                lambda: PipedriveHook.limiter.func(self)  # type: ignore[attr-defined]
            )
        return self.__dict__["settings"]

    async def _aauth_headers(self, client: httpx.AsyncClient, force_refresh: bool = False) -> dict[str, str]:
        s = await self._asettings()
        if s["auth_type"] == "token":
            return {"x-api-token": s["token"]}
        if force_refresh or not self._access_token or time.time() > self._access_expires - 60:
            # reading and storing the rotation Variable are blocking calls: off the event loop
            resp: Any = None
            refresh = ""
            for refresh in await asyncio.to_thread(self._refresh_candidates):
                try:
                    resp = await client.post(s["oauth_token_url"],
                                             data={"grant_type": "refresh_token", "refresh_token": refresh},
                                             auth=(s["client_id"], s["client_secret"]))
                except httpx.HTTPError as err:
                    raise CrmTransientApiError(f"OAuth endpoint: {http.failure_text(err)}",
                                               service="pipedrive") from None
                if resp.status_code in (400, 401) and refresh != s["refresh_token"]:
                    continue
                break
            await asyncio.to_thread(self._accept_token_answer, resp, refresh)
        return {"Authorization": f"Bearer {self._access_token}"}

    async def aget(self, entity: str, record_id: Any) -> dict[str, Any]:
        """One record, retried in place on transient failures (as the sync hook's reads are)."""
        await self._asettings()
        return await acall_with_retries(lambda: self._aget_once(entity, record_id), idempotent=True,
                                        description=f"GET {entity}/{record_id}", stats=self.limiter.stats)

    async def _aget_once(self, entity: str, record_id: Any) -> dict[str, Any]:
        info = entity_info(entity)
        s = await self._asettings()
        path = f"{info.path}/{record_id}"
        what = f"GET /api/{info.version}{path}"
        await self.limiter.before_request_async(kind="read", cost=pipedrive_token_cost("GET", path, info.version))
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for attempt in (1, 2):
                headers = await self._aauth_headers(client, force_refresh=attempt == 2)
                resp = await http.asend(client, "GET", f"{s['base_url']}/api/{info.version}{path}", what=what,
                                        service="pipedrive", headers=headers)
                await asyncio.to_thread(self.limiter.after_response, resp.status_code, resp.headers)
                if resp.status_code == 401 and attempt == 1 and s["auth_type"] == "oauth":
                    continue
                break
        return _envelope(resp.status_code, resp.content, resp.headers.get("content-type"), what)["data"]
