"""Emulated Pipedrive REST API: v2 core entities, v1 leads/notes/users/mailbox/recents, OAuth.

Routes under ``/pipedrive``:

- ``/api/v2/{deals,persons,organizations,activities,products,pipelines,stages}`` list/get/POST/PATCH/DELETE,
  ``/api/v2/deals/archived``, ``/api/v2/{deals,persons,organizations,products,leads}/search``,
  ``/api/v2/itemSearch`` and ``/api/v2/{deal,person,organization,product,activity}Fields``;
- ``/api/v1/leads`` (+ ``/archived``), ``/api/v1/notes``, ``/api/v1/users`` and ``/users/me``,
  ``/api/v1/recents``, ``/api/v1/mailbox/mailThreads`` (+ ``/{id}/mailMessages``), ``/api/v1/*Fields``;
  the v1 endpoints of the v2 entities answer 410 (out of support since 2026-08-01);
- ``POST /oauth/token`` (refresh-token grant, HTTP Basic client credentials, rotating refresh tokens);
- ``GET /_state/{entity}`` (no auth: every record of an entity including deleted ones, v2 shape;
  ``leads`` and ``notes`` in v1 shape, ``mailThreads`` too) and ``GET|PATCH /_state/settings``
  (``{"deal_limit": n}``: creating a deal beyond ``n`` live deals answers 403 like a capped plan;
  ``{"daily_token_budget": n}``: the company's daily token budget, instead of 30,000 x plan x seats).

Limits per token: the plan's burst per rolling 2 s (by auth type), search 10 / 2 s, 10,000 POST/PUT
per UTC day (API token), and the company's daily token budget (30,000 x plan multiplier x seats)
charged by each endpoint's ``x-token-cost``; ``x-ratelimit-*`` and budget headers on every
authenticated answer; ``429 {"success": false, "error": "request over limit", "errorCode": 429}``.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import math
import re
import secrets
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crm_sandbox.core import (
    DEFAULT_PIPEDRIVE_CLIENT,
    DEFAULT_PIPEDRIVE_REFRESH_TOKEN,
    DEFAULT_PIPEDRIVE_TOKEN,
    FastJSONResponse,
    SandboxState,
    SlidingWindow,
    token_key,
    utc_text,
)
from crm_sandbox.pipedrive_costs import token_cost
from crm_sandbox.pipedrive_data import (
    ARCHIVED,
    DAY,
    DELETED,
    GONE,
    SEARCHABLE_TYPES,
    STATUSES,
    USERS,
    PipedriveData,
)

BURST = {"lite": (20, 80), "growth": (40, 160), "premium": (100, 400), "ultimate": (120, 480)}
PLAN_ALIASES = {"essential": "lite", "advanced": "growth", "professional": "premium", "enterprise": "ultimate"}
MULTIPLIER = {"lite": 1, "growth": 2, "premium": 5, "ultimate": 7}
SEARCH_LIMIT = 10
WINDOW_SECONDS = 2.0
DAILY_WRITES = 10_000
DAILY_TOKENS = 30_000
MAX_LIMIT = 500
V2_ENTITIES = ("deals", "persons", "organizations", "activities", "products", "pipelines", "stages")
V1_ENTITIES = ("leads", "notes")
INCREMENTAL = {"deals", "persons", "organizations", "activities"}
FIELD_ENDPOINTS = {"dealFields": "deals", "personFields": "persons", "organizationFields": "organizations",
                   "productFields": "products", "activityFields": "activities"}
SEARCHABLE = {"deals", "persons", "organizations", "products", "leads"}
SEARCH_FIELDS = {
    "deals": ("title", "custom_fields", "notes"),
    "persons": ("name", "email", "phone", "notes", "custom_fields"),
    "organizations": ("name", "address", "notes", "custom_fields"),
    "products": ("name", "code", "custom_fields"),
    "leads": ("title", "notes", "custom_fields"),
}
ITEM_TYPES = {"deal": "deals", "person": "persons", "organization": "organizations", "product": "products",
              "lead": "leads"}
# query parameters that filter on a plain attribute of the record
ATTRIBUTE_FILTERS = {
    "deals": ("owner_id", "person_id", "org_id", "pipeline_id", "stage_id"),
    "persons": ("owner_id", "org_id"),
    "organizations": ("owner_id",),
    "activities": ("owner_id", "deal_id", "person_id", "org_id", "done"),
    "products": ("owner_id",),
    "stages": ("pipeline_id",),
    "pipelines": (),
    "leads": ("owner_id", "person_id", "organization_id"),
    "notes": ("user_id", "deal_id", "person_id", "org_id", "lead_id"),
}
REQUIRED = {"deals": "title", "persons": "name", "organizations": "name", "products": "name",
            "activities": "subject", "pipelines": "name", "stages": "name", "leads": "title", "notes": "content"}
READ_ONLY_KEYS = {"id", "add_time", "update_time", "is_deleted", "custom_fields", "creator_user_id"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})$")
V1_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}Z?$")
# Keys the published schemas declare nullable; any other key whose value is unknown (None) is left out
# of an answer, so that answers validate against the specs (clients must read them with .get()).
NULLABLE = {
    "deals": {"acv", "arr", "channel", "channel_id", "close_time", "lost_reason", "mrr", "origin_id", "probability",
              "source_lead_id", "archive_time"},
    "organizations": {"annual_revenue", "employee_count", "industry", "linkedin", "website"},
    "stages": {"days_to_rotten"},
    "leads": {"channel", "channel_id", "expected_close_date", "next_activity_id", "organization_id", "origin_id",
              "person_id", "source_deal_id", "value"},
}
RENDER_CACHE_SIZE = 400_000  # records (about 1 KB each)
UNAUTHORIZED = {"success": False, "error": "unauthorized access", "errorCode": 401,
                "error_info": "Please check developers.pipedrive.com"}


def rfc3339(ts: float) -> str:
    return utc_text(ts)


def v1_time(ts: float) -> str:
    return utc_text(ts, " ", "")


def lead_time(ts: float) -> str:
    return utc_text(ts, "T", ".000Z")


def parse_time(text: str, version: str) -> int:
    """Seconds since the epoch of an ``updated_since``-style value; ValueError when malformed.

    v2 takes RFC 3339 without fractions only; v1 also takes ``YYYY-MM-DD HH:MM:SS`` (UTC).
    """
    text = text.strip()
    if not (RFC3339.match(text) or (version == "v1" and V1_TIME.match(text))):
        raise ValueError(text)
    parsed = datetime.fromisoformat(text.replace(" ", "T").replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def error(status: int, message: str, info: str = "", **extra: Any) -> JSONResponse:
    """An error in Pipedrive's envelope."""
    body = {"success": False, "error": message, "error_info": info or "Please check developers.pipedrive.com",
            "data": None, "additional_data": None, **extra}
    return FastJSONResponse(body, status_code=status)


def not_found() -> JSONResponse:
    return error(404, "Entity was not found", "Object was not found.")


def unknown_path() -> JSONResponse:
    return error(404, "Unknown method .", errorCode=404)


def ok(data: Any, additional: Any = None, status: int = 200) -> JSONResponse:
    body: dict[str, Any] = {"success": True, "data": data}
    if additional is not None:
        body["additional_data"] = additional
    return FastJSONResponse(body, status_code=status)


def ok_rendered(items: list[bytes], additional: Any) -> Response:
    """A list answer in Pipedrive's envelope from records already rendered as JSON."""
    body = b'{"success":true,"data":[' + b",".join(items) + b'],"additional_data":' + msgspec.json.encode(
        additional) + b"}"
    return Response(body, media_type="application/json")


def encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    padded = cursor + "=" * (-len(cursor) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    if not isinstance(value, dict):
        raise ValueError(cursor)
    return value


def offset_from_cursor(query: dict[str, str]) -> int:
    """Where an offset cursor (search results, field definitions) points; 0 without one."""
    if not query.get("cursor"):
        return 0
    try:
        return int(decode_cursor(query["cursor"])["o"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad_request("Validation failed: cursor: Invalid cursor") from None


def _plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class ApiError(Exception):
    """Raised inside handlers; turned into an error answer."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def bad_request(message: str, info: str = "") -> ApiError:
    return ApiError(error(400, message, info))


class PipedriveService:
    """The ``/pipedrive`` routes over :class:`PipedriveData`, with auth, limits and headers.

    :param state: the shared sandbox state (config, clock, counters, lock).
    """

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.data = PipedriveData(state)
        self.windows: dict[str, SlidingWindow] = {}
        self.search_windows: dict[str, SlidingWindow] = {}
        self.daily: dict[tuple[str, str], int] = {}
        self.access_tokens: dict[str, tuple[float, str]] = {}  # token -> (expiry, client id)
        self.refresh_tokens = {DEFAULT_PIPEDRIVE_REFRESH_TOKEN}
        self._list_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        # records as JSON, rendered once and reused until the next write; building a seeded record
        # costs ~20 us of Python, which at 500 a page made the emulator, not the client, the bottleneck
        self._rendered: dict[tuple[str, int], bytes] = {}
        self._orders: dict[tuple[Any, ...], tuple[list[int], array[int]]] = {}
        self._rendered_for: tuple[int, int] = (id(self.data), self.data.version)
        self.deal_limit: int | None = None  # live deals a capped plan allows (None: no cap)
        self.daily_token_budget: int | None = None  # overrides 30,000 x multiplier x seats

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/oauth/token", self.oauth_token, methods=["POST"]),
            Route("/_state/settings", self.settings, methods=["GET", "PATCH"]),
            Route("/_state/{entity}", self.full_state, methods=["GET"]),
            Route("/api/{version}/{path:path}", self.api, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/{path:path}", self.no_route, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    def snapshot(self) -> dict[str, Any]:
        return {"data": self.data.dump(), "refresh_tokens": set(self.refresh_tokens), "daily": dict(self.daily),
                "deal_limit": self.deal_limit, "daily_token_budget": self.daily_token_budget}

    def restore(self, data: dict[str, Any]) -> None:
        self.data.load(data["data"])
        self.refresh_tokens = set(data.get("refresh_tokens") or self.refresh_tokens)
        self.daily = dict(data.get("daily") or {})
        self.deal_limit = data.get("deal_limit")
        self.daily_token_budget = data.get("daily_token_budget")
        self._list_cache.clear()
        self._rendered.clear()

    def prerender_all(self) -> None:
        for entity in ("deals", "persons", "organizations"):
            self.prerender(entity)
            self._ordered_ids(entity, "update_time", None, None)

    def prerender(self, entity: str) -> int:
        """Render every record of ``entity`` now (benchmarks: keeps the emulator's CPU off the clock)."""
        with self.state.lock:
            table = self.data.tables[entity]
            return sum(1 for rid in table.ids() if self.view_json(entity, rid))

    # -- control ------------------------------------------------------------------------------------
    async def full_state(self, request: Request) -> Response:
        entity = request.path_params["entity"]
        with self.state.lock:
            if entity == "mailThreads":
                return JSONResponse([self._thread_view(t) for t in self.data.threads])
            if entity not in self.data.tables:
                return error(404, f"unknown entity {entity!r}", f"known: {sorted(self.data.tables)}")
            table = self.data.tables[entity]
            return JSONResponse([self.view(entity, rid) for rid in table.ids()])

    async def settings(self, request: Request) -> Response:
        if request.method == "PATCH":
            body = await request.json()
            with self.state.lock:
                for name in ("deal_limit", "daily_token_budget"):
                    if name in body:
                        setattr(self, name, None if body[name] is None else int(body[name]))
        return JSONResponse({"deal_limit": self.deal_limit, "daily_token_budget": self.daily_token_budget})

    async def no_route(self, request: Request) -> Response:
        return unknown_path()

    async def oauth_token(self, request: Request) -> Response:
        form = dict(await request.form())
        auth = request.headers.get("authorization", "")
        client: tuple[str, str] = ("", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                client = (user, password)
            except (binascii.Error, UnicodeDecodeError):
                pass
        if client != DEFAULT_PIPEDRIVE_CLIENT:
            return JSONResponse({"success": False, "message": "Invalid client credentials", "error": "invalid_client"},
                                status_code=401)
        if form.get("grant_type") != "refresh_token":
            return JSONResponse({"success": False, "message": "Unsupported grant type",
                                 "error": "unsupported_grant_type"}, status_code=400)
        with self.state.lock:
            refresh = str(form.get("refresh_token") or "")
            if refresh not in self.refresh_tokens:
                return JSONResponse({"success": False, "message": "Invalid grant: refresh token is invalid",
                                     "error": "invalid_grant"}, status_code=400)
            self.refresh_tokens.discard(refresh)  # rotation: the old refresh token stops working
            new_refresh = "rt-" + secrets.token_hex(16)
            self.refresh_tokens.add(new_refresh)
            access = "at-" + secrets.token_hex(16)
            self.access_tokens[access] = (self.state.clock.now() + 3600, client[0])
        base = str(request.base_url).rstrip("/") + "/pipedrive"
        return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                             "refresh_token": new_refresh, "scope": "base,deals:full,contacts:full,leads:full,"
                             "activities:full,products:full,mail:read,users:read", "api_domain": base})

    # -- auth and limits ----------------------------------------------------------------------------
    def _identify(self, request: Request) -> tuple[str, str, str, str] | None:
        """(token, limit key, plan, auth type) of the caller, or None."""
        cfg = self.state.config
        token = request.headers.get("x-api-token") or request.query_params.get("api_token")
        if token:
            plan = cfg.pipedrive_tokens.get(token)
            if plan is None:
                return None
            return token, token_key(token), self._plan(plan), "token"
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            bearer = auth[7:].strip()
            expiry, client = self.access_tokens.get(bearer, (0.0, ""))
            if expiry > self.state.clock.now():
                default = cfg.pipedrive_tokens.get(DEFAULT_PIPEDRIVE_TOKEN) or "ultimate"
                # OAuth limits count per app and user, so a refreshed access token keeps its window
                return bearer, "oauth-" + token_key(client), self._plan(default), "oauth"
        return None

    @staticmethod
    def _plan(name: str) -> str:
        plan = PLAN_ALIASES.get(name.lower(), name.lower())
        return plan if plan in BURST else "ultimate"

    def _limit(self, key: str, plan: str, auth_type: str, method: str, version: str, path: str
               ) -> tuple[dict[str, str], JSONResponse | None]:
        """Apply every limit to one request; return the headers and a 429 answer if refused."""
        cfg, now = self.state.config, self.state.clock.now()
        burst = BURST[plan][1 if auth_type == "oauth" else 0]
        window = self.windows.setdefault(key, SlidingWindow(burst, WINDOW_SECONDS))
        seen = window.hit(now)
        self.state.counters.note_window(f"pipedrive:{key}", seen)
        limit, remaining, reset = burst, burst - seen, window.reset_in(now)
        over = seen > burst
        if path.endswith("/search") or path == "itemSearch":
            search = self.search_windows.setdefault(key, SlidingWindow(SEARCH_LIMIT, WINDOW_SECONDS))
            searched = search.hit(now)
            self.state.counters.note_window(f"pipedrive-search:{key}", searched)
            # a search answer reports the tighter search window
            limit, remaining, reset = SEARCH_LIMIT, SEARCH_LIMIT - searched, search.reset_in(now)
            over = over or searched > SEARCH_LIMIT
        headers = {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(max(0, remaining)),
                   "x-ratelimit-reset": str(max(1, math.ceil(reset)))}
        day = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
        budget = DAILY_TOKENS * MULTIPLIER[plan] * max(0, int(cfg.pipedrive_seats))
        if self.daily_token_budget is not None:
            budget = self.daily_token_budget
        spent = self.daily.get(("budget", day), 0)
        headers["x-daily-ratelimit-token-limit"] = str(budget)
        headers["x-daily-ratelimit-token-remaining"] = str(max(0, budget - spent))
        writes_key = (f"writes:{key}", day)
        counts_writes = method in ("POST", "PUT") and auth_type == "token"
        if counts_writes:
            headers["x-daily-requests-left"] = str(max(0, DAILY_WRITES - self.daily.get(writes_key, 0)))
        if over:
            return headers, self._too_many()
        cost = token_cost(method, path, version)
        if spent + cost > budget:
            return headers, self._too_many()
        if counts_writes:
            writes = self.daily.get(writes_key, 0)
            if writes >= DAILY_WRITES:
                return headers, self._too_many()
            self.daily[writes_key] = writes + 1
            headers["x-daily-requests-left"] = str(DAILY_WRITES - writes - 1)
        self.daily[("budget", day)] = spent + cost
        headers["x-daily-ratelimit-token-remaining"] = str(budget - spent - cost)
        return headers, None

    def _too_many(self) -> JSONResponse:
        self.state.counters.count_429("pipedrive")
        return JSONResponse({"success": False, "error": "request over limit", "errorCode": 429}, status_code=429)

    async def api(self, request: Request) -> Response:
        version, path, method = request.path_params["version"], request.path_params["path"].strip("/"), request.method
        ident = self._identify(request)
        if ident is None:
            return JSONResponse(UNAUTHORIZED, status_code=401)
        token, key, plan, auth_type = ident
        body: Any = None
        if method in ("POST", "PUT", "PATCH"):
            raw = await request.body()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = ApiError(error(400, "Invalid JSON in request body"))
            elif request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                body = dict(await request.form())
            else:
                body = {}
        with self.state.lock:
            self.state.counters.count_request("pipedrive", f"{method} /{version}/{path.split('/')[0]}", token)
            headers, refusal = self._limit(key, plan, auth_type, method, version, path)
            if refusal is not None:
                refusal.headers.update(headers)
                return refusal
            try:
                if isinstance(body, ApiError):
                    raise body
                if version not in ("v1", "v2"):
                    raise ApiError(unknown_path())
                response = self._dispatch(method, version, path, request.query_params.multi_items(), body)
            except ApiError as exc:
                response = exc.response
        response.headers.update(headers)
        return response

    # -- routing ------------------------------------------------------------------------------------
    def _dispatch(self, method: str, version: str, path: str, items: list[tuple[str, str]], body: Any
                  ) -> Response:
        query = dict(items)
        parts = path.split("/")
        head = parts[0]
        if head in FIELD_ENDPOINTS and len(parts) == 1 and method == "GET":
            return self._fields(version, FIELD_ENDPOINTS[head], query)
        if version == "v1":
            if head == "users" and method == "GET":
                if parts[1:] == ["me"]:
                    return ok(self._user(1))
                if len(parts) == 1:
                    return ok([self._user(int(u["id"])) for u in USERS], {"pagination": {
                        "start": 0, "limit": 100, "more_items_in_collection": False}})
                if len(parts) == 2 and parts[1].isdigit():
                    if not any(u["id"] == int(parts[1]) for u in USERS):
                        raise ApiError(not_found())
                    return ok(self._user(int(parts[1])))
            if head == "mailbox" and method == "GET":
                return self._mailbox(parts, query)
            if head == "recents" and len(parts) == 1 and method == "GET":
                return self._recents(query)
            if head in V2_ENTITIES:
                return error(410, "This endpoint is deprecated and no longer supported",
                             f"Use /api/v2/{head} instead.", errorCode=410)
            if head not in V1_ENTITIES:
                raise ApiError(unknown_path())
        else:
            if head == "itemSearch" and len(parts) == 1 and method == "GET":
                return self._search(None, query)
            if head == "leads" and parts[1:] == ["search"] and method == "GET":
                return self._search("leads", query)
            if head not in V2_ENTITIES:
                raise ApiError(unknown_path())
        entity = head
        if len(parts) == 1:
            if method == "GET":
                return self._list(entity, version, query, items, archived=False)
            if method == "POST":
                return self._create(entity, version, body)
        elif len(parts) == 2 and parts[1] == "search" and entity in SEARCHABLE and method == "GET":
            return self._search(entity, query)
        elif len(parts) == 2 and parts[1] == "archived" and entity in ("deals", "leads") and method == "GET":
            return self._list(entity, version, query, items, archived=True)
        elif len(parts) == 2:
            rid = self._resolve(entity, parts[1])
            if method == "GET":
                return ok(self.view(entity, rid))
            if rid is None or self.data.tables[entity].flags[rid] & DELETED:
                raise ApiError(not_found())
            if (method == "PATCH" and (version == "v2" or entity == "leads")) or (method == "PUT" and entity == "notes"):
                return self._update(entity, version, rid, body)
            if method == "DELETE":
                return self._delete(entity, rid)
        raise ApiError(unknown_path())

    def _resolve(self, entity: str, text: str) -> int:
        table = self.data.tables[entity]
        rid = table.id_of.get(text.lower(), 0) if entity == "leads" else (int(text) if text.isdigit() else 0)
        if not table.exists(rid):
            raise ApiError(not_found())
        if entity not in ("deals",) and table.flags[rid] & DELETED:
            raise ApiError(not_found())
        return rid

    # -- views --------------------------------------------------------------------------------------
    def view(self, entity: str, rid: int) -> dict[str, Any]:
        """A record in the shape the API answers (v2, or v1 for leads and notes)."""
        nullable = NULLABLE.get(entity, set())
        return {k: v for k, v in self._view(entity, rid).items() if v is not None or k in nullable}

    def view_json(self, entity: str, rid: int) -> bytes:
        """:meth:`view` as JSON, from the render cache (emptied by any write)."""
        current = (id(self.data), self.data.version)
        if self._rendered_for != current:
            self._rendered.clear()
            self._rendered_for = current
        key = (entity, rid)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = msgspec.json.encode(self.view(entity, rid))
            if len(self._rendered) < RENDER_CACHE_SIZE:
                self._rendered[key] = rendered
        return rendered

    def _view(self, entity: str, rid: int) -> dict[str, Any]:
        data, table = self.data, self.data.tables[entity]
        row = data.row(entity, rid)
        if entity == "leads":
            return {"id": table.uuid_of[rid], **row, "is_archived": bool(table.flags[rid] & ARCHIVED),
                    "add_time": lead_time(table.add_time[rid]), "update_time": lead_time(table.update_time[rid])}
        if entity == "notes":
            out = {"id": rid, **row, "add_time": v1_time(table.add_time[rid]),
                   "update_time": v1_time(table.update_time[rid])}
            out["deal"] = self._linked("deals", row.get("deal_id"), "title")
            out["person"] = self._linked("persons", row.get("person_id"), "name")
            out["organization"] = self._linked("organizations", row.get("org_id"), "name")
            user = next((u for u in USERS if u["id"] == row.get("user_id")), USERS[0])
            out["user"] = {"email": user["email"], "name": user["name"], "icon_url": "", "is_you": user["id"] == 1}
            return out
        out = {"id": rid, **row}
        if "custom_fields" in out:
            out["custom_fields"] = dict(out["custom_fields"])
        out["add_time"] = rfc3339(table.add_time[rid])
        out["update_time"] = rfc3339(table.update_time[rid])
        out["is_deleted"] = bool(table.flags[rid] & DELETED)
        if entity == "deals":
            out["status"] = STATUSES[table.status[rid]]
            out["is_archived"] = bool(table.flags[rid] & ARCHIVED)
            out["archive_time"] = out["update_time"] if out["is_archived"] else None
        return out

    def _linked(self, entity: str, rid: Any, attr: str) -> dict[str, Any] | None:
        if not isinstance(rid, int) or not self.data.tables[entity].exists(rid):
            return None
        return {attr: self.data.row(entity, rid).get(attr)}

    def _user(self, uid: int) -> dict[str, Any]:
        user = next(u for u in USERS if u["id"] == uid)
        created = v1_time(self.data.now - 900 * DAY)
        return {
            **user, "default_currency": "USD", "locale": "en_US", "lang": 1, "phone": None, "activated": True,
            "last_login": v1_time(self.data.now - 3600), "created": created, "modified": created,
            "has_created_company": uid == 1, "access": [{"app": "sales", "admin": uid == 1,
                                                         "permission_set_id": "sandbox-permissions"}],
            "active_flag": True, "timezone_name": "UTC", "timezone_offset": "+00:00", "role_id": 1, "icon_url": None,
            "is_you": uid == 1, "is_deleted": False, "is_admin": int(uid == 1), "company_id": 1,
            "company_name": "Sandbox Inc", "company_domain": "sandbox", "company_country": "US",
            "company_industry": "Software", "language": {"language_code": "en", "country_code": "US"},
        }

    # -- lists --------------------------------------------------------------------------------------
    def _limit_param(self, query: dict[str, str], default: int = 100) -> int:
        raw = query.get("limit")
        if raw in (None, ""):
            return default
        try:
            limit = int(str(raw))
        except ValueError:
            raise bad_request("Validation failed: limit: Expected number, received string") from None
        if limit > MAX_LIMIT:
            raise bad_request(f"Validation failed: limit: Number must be less than or equal to {MAX_LIMIT}")
        if limit < 1:
            raise bad_request("Validation failed: limit: Number must be greater than or equal to 1")
        return limit

    def _list(self, entity: str, version: str, query: dict[str, str], items: list[tuple[str, str]],
              archived: bool) -> Response:
        limit = self._limit_param(query)
        sort_by, descending = self._sort(entity, version, query)
        # paging through a large list must not filter it again for every page
        signature = tuple(sorted((k, v) for k, v in items if k not in ("cursor", "start", "limit")))
        key = (entity, version, archived, self.data.version, int(self.state.clock.now()) // 3600, signature)
        ids = self._list_cache.get(key)
        if ids is None:
            ids = self._select(entity, version, query, archived, sort_by, descending)
            self._list_cache[key] = ids
            while len(self._list_cache) > 16:
                self._list_cache.popitem(last=False)
        sort_key = self._sort_key(entity, sort_by, descending)
        if version == "v2":
            start = 0
            if query.get("cursor"):
                try:
                    cursor = decode_cursor(query["cursor"])
                    if cursor.get("s") != f"{sort_by}:{int(descending)}":
                        raise ValueError("cursor of another sort order")
                    start = bisect.bisect_right(ids, sort_key_of(cursor), key=sort_key)
                except (ValueError, KeyError, TypeError, binascii.Error):
                    raise bad_request("Validation failed: cursor: Invalid cursor") from None
            page = ids[start : start + limit]
            next_cursor = None
            if start + limit < len(ids):
                last = page[-1]
                next_cursor = encode_cursor({"s": f"{sort_by}:{int(descending)}", "k": sort_key(last)})
            return ok_rendered([self.view_json(entity, rid) for rid in page], {"next_cursor": next_cursor})
        try:
            start = max(0, int(query.get("start") or 0))
        except ValueError:
            raise bad_request("Validation failed: start: Expected number") from None
        page = ids[start : start + limit]
        more = start + limit < len(ids)
        pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        return ok_rendered([self.view_json(entity, rid) for rid in page], {"pagination": pagination})

    def _sort(self, entity: str, version: str, query: dict[str, str]) -> tuple[str, bool]:
        if version == "v1":
            text = (query.get("sort") or "id ASC").split(",")[0].strip().split()
            field = text[0] if text else "id"
            if field not in ("id", "add_time", "update_time"):
                raise bad_request(f"Sorting by {field!r} is not supported here",
                                  "Supported: id, add_time, update_time")
            return field, len(text) > 1 and text[1].upper() == "DESC"
        default = "update_time" if entity == "products" and "sort_by" not in query else "id"
        field = query.get("sort_by") or default
        allowed = ("id", "update_time", "add_time")
        if field not in allowed:
            raise bad_request(f"Validation failed: sort_by: Invalid enum value. Expected {' | '.join(allowed)}, "
                              f"received '{field}'")
        direction = (query.get("sort_direction") or "asc").lower()
        if direction not in ("asc", "desc"):
            raise bad_request("Validation failed: sort_direction: Invalid enum value. Expected 'asc' | 'desc'")
        return field, direction == "desc"

    def _sort_key(self, entity: str, sort_by: str, descending: bool) -> Callable[[int], tuple[int, int]]:
        table = self.data.tables[entity]
        column = table.update_time if sort_by == "update_time" else table.add_time
        sign = -1 if descending else 1
        if sort_by == "id":
            return lambda rid: (sign * rid, 0)
        return lambda rid: (sign * column[rid], sign * rid)

    def _select(self, entity: str, version: str, query: dict[str, str], archived: bool, sort_by: str,
                descending: bool) -> list[int]:
        """Ids of the records a list answers, in order (deleted/archived rules, filters, sort)."""
        table, now = self.data.tables[entity], int(self.state.clock.now())
        flags, status, updated, added = table.flags, table.status, table.update_time, table.add_time
        has_since = "updated_since" in query or "updated_until" in query
        if has_since and (entity in ("pipelines", "stages", "products") or entity == "leads" and archived):
            raise bad_request("Validation failed: updated_since is not a supported parameter for this endpoint")
        since = until = None
        try:
            if query.get("updated_since"):
                since = parse_time(query["updated_since"], version)
            if query.get("updated_until") and version == "v2":
                until = parse_time(query["updated_until"], version)
        except ValueError:
            raise bad_request("Validation failed: updated_since/updated_until must be RFC 3339 date-times "
                              "without fractions, e.g. 2025-01-01T10:20:00Z") from None
        ids, bounded = self._ordered_ids(entity, sort_by, since, until)
        if entity == "deals":
            wanted = {s for s in (query.get("status") or "").split(",") if s}
            if wanted - set(STATUSES):
                raise bad_request(f"Validation failed: status: Invalid value {sorted(wanted - set(STATUSES))}",
                                  "Expected open, won, lost or deleted")
            codes = {STATUSES.index(s) for s in wanted} or {0, 1, 2}
            recent = now - 30 * DAY
            if not wanted and not archived:  # the usual list: neither deleted nor archived
                ids = [i for i in ids if not flags[i]]
            else:
                ids = [i for i in ids if status[i] in codes and (
                    updated[i] >= recent if flags[i] & DELETED else bool(flags[i] & ARCHIVED) == archived)]
        elif entity == "leads":
            mode = "archived" if archived else (query.get("archived_status") or "not_archived")
            if mode not in ("archived", "not_archived", "all"):
                raise bad_request("Validation failed: archived_status must be archived, not_archived or all")
            if mode != "all":
                ids = [i for i in ids if bool(flags[i] & ARCHIVED) == (mode == "archived")]
        else:
            ids = [i for i in ids if not flags[i] & DELETED]
        if since is not None and not bounded:
            ids = [i for i in ids if updated[i] >= since]
        if until is not None and not bounded:
            ids = [i for i in ids if updated[i] < until]
        if entity == "notes":
            for name, bound in (("start_date", 0), ("end_date", DAY)):
                if query.get(name):
                    try:
                        day = int(datetime.strptime(query[name], "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp())
                    except ValueError:
                        raise bad_request(f"Validation failed: {name} must be YYYY-MM-DD") from None
                    ids = [i for i in ids if (added[i] >= day if bound == 0 else added[i] < day + bound)]
        if query.get("ids"):
            try:
                wanted_ids = {int(i) for i in query["ids"].split(",") if i.strip()}
            except ValueError:
                raise bad_request("Validation failed: ids must be a comma-separated list of integers") from None
            if len(wanted_ids) > 100:
                raise bad_request("Validation failed: ids: at most 100 ids")
            ids = [i for i in ids if i in wanted_ids]
        for name in ATTRIBUTE_FILTERS.get(entity, ()):
            raw = query.get(name)
            if raw in (None, ""):
                continue
            if name == "done":
                expected: Any = raw.lower() in ("1", "true")
            else:
                try:
                    expected = int(raw)
                except ValueError:
                    raise bad_request(f"Validation failed: {name}: Expected number, received string") from None
            ids = [i for i in ids if self.data.attr(entity, i, name) == expected]
        if descending:  # the ascending order by (column, id), reversed, is the descending one
            ids.reverse()
        return ids

    def _ordered_ids(self, entity: str, sort_by: str, since: int | None, until: int | None
                     ) -> tuple[list[int], bool]:
        """Ids ascending by ``sort_by`` then id and, when sorted by update time, already cut to
        ``[since, until)`` (returns True then). The order is kept until the next write: sorting
        200,000 deals for every time slice of an export held the event loop for half a second."""
        table = self.data.tables[entity]
        if sort_by == "id":
            return list(table.ids()), False
        key = (id(self.data), self.data.version, entity, sort_by)
        cached = self._orders.get(key)
        if cached is None:
            column = table.update_time if sort_by == "update_time" else table.add_time
            order = sorted(table.ids(), key=lambda rid: (column[rid], rid))
            cached = (order, array("q", (column[rid] for rid in order)))
            self._orders = {k: v for k, v in self._orders.items() if k[:2] == key[:2]}
            self._orders[key] = cached
        order, values = cached
        if sort_by != "update_time" or (since is None and until is None):
            return list(order), False
        lo = bisect.bisect_left(values, since) if since is not None else 0
        hi = bisect.bisect_left(values, until) if until is not None else len(order)
        return order[lo:hi], True

    # -- writes -------------------------------------------------------------------------------------
    def _check_custom(self, entity: str, values: dict[str, Any]) -> None:
        defs = self.data.custom.get(entity, {})
        for key, value in values.items():
            definition = defs.get(key)
            if definition is None:
                raise bad_request(f"Unknown custom field key {key!r}",
                                  f"No {entity[:-1]} field has the key {key!r}; see /{entity[:-1]}Fields.")
            if value is None:
                continue
            ftype, name = definition["field_type"], definition["name"]
            option_ids = {o["id"] for o in definition.get("options") or []}
            expected = ""
            if ftype == "double":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    expected = "a number"
            elif ftype == "monetary":
                if entity == "leads":
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        expected = "a number"
                elif not (isinstance(value, dict) and isinstance(value.get("value"), (int, float))
                          and not isinstance(value.get("value"), bool)
                          and isinstance(value.get("currency", "USD"), str)):
                    expected = "an object {value: number, currency: string}"
            elif ftype == "enum":
                if isinstance(value, bool) or value not in option_ids:
                    expected = f"one of the option ids {sorted(option_ids)}"
            elif ftype == "set":
                if not isinstance(value, list) or any(isinstance(v, bool) or v not in option_ids for v in value):
                    expected = f"a list of option ids from {sorted(option_ids)}"
            elif ftype == "date":
                try:
                    datetime.strptime(str(value), "%Y-%m-%d")
                    if not isinstance(value, str):
                        raise ValueError(value)
                except ValueError:
                    expected = "a date YYYY-MM-DD"
            elif ftype == "address":
                if not (isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("value"), str))):
                    expected = "a string or an object {value: string, ...}"
            elif not isinstance(value, str):
                expected = "a string"
            if expected:
                raise bad_request(f"Validation failed: custom field {name!r} ({key}, {ftype}) expects {expected}; "
                                  f"got {value!r}")

    def _check_standard(self, entity: str, body: dict[str, Any], creating: bool) -> None:
        required = REQUIRED.get(entity)
        if creating and required and not (isinstance(body.get(required), str) and body[required].strip()):
            raise bad_request(f"Validation failed: {required}: Required",
                              f"A {entity[:-1]} needs a non-empty {required!r}.")
        for name in ("title", "name", "subject", "content", "currency"):
            if name in body and not isinstance(body[name], str):
                raise bad_request(f"Validation failed: {name}: Expected string, received {type(body[name]).__name__}")
        if "value" in body and body["value"] is not None:
            value = body["value"]
            if entity == "leads":
                if not (isinstance(value, dict) and isinstance(value.get("amount"), (int, float))
                        and isinstance(value.get("currency"), str)):
                    raise bad_request("Validation failed: value: Expected object {amount: number, currency: string}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_request("Validation failed: value: Expected number")
        if entity == "deals" and "status" in body and body["status"] not in ("open", "won", "lost"):
            raise bad_request("Validation failed: status: Invalid enum value. Expected 'open' | 'won' | 'lost'")
        for name in ("emails", "phones"):
            if name in body and not (isinstance(body[name], list) and all(
                    isinstance(e, dict) and isinstance(e.get("value"), str) for e in body[name])):
                raise bad_request(f"Validation failed: {name}: Expected array of objects "
                                  "{value: string, primary: boolean, label: string}")
        for name, target in (("stage_id", "stages"), ("pipeline_id", "pipelines"), ("person_id", "persons"),
                             ("org_id", "organizations"), ("organization_id", "organizations"), ("deal_id", "deals")):
            if body.get(name) is None or name not in body:
                continue
            rid = body[name]
            table = self.data.tables[target]
            if isinstance(rid, bool) or not isinstance(rid, int) or not table.exists(rid) or table.flags[rid] & DELETED:
                raise bad_request(f"Validation failed: {name}: {target[:-1].capitalize()} with id {rid!r} not found")
        if (entity == "deals" and body.get("stage_id") is not None and body.get("pipeline_id") is not None
                and self.data.row("stages", body["stage_id"])["pipeline_id"] != body["pipeline_id"]):
            raise ApiError(error(422, "Stage does not belong to the given pipeline",
                                     f"Stage {body['stage_id']} is not in pipeline {body['pipeline_id']}."))

    def _custom_values(self, entity: str, body: dict[str, Any]) -> dict[str, Any]:
        if entity == "leads":
            return {k: v for k, v in body.items() if re.fullmatch(r"[0-9a-f]{40}", k)}
        custom = body.get("custom_fields")
        if custom is None:
            return {}
        if not isinstance(custom, dict):
            raise bad_request("Validation failed: custom_fields: Expected object")
        if entity not in self.data.custom:
            raise bad_request(f"{entity} have no custom fields")
        return custom

    def _create(self, entity: str, version: str, body: Any) -> JSONResponse:
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the request body must be a JSON object")
        table, now = self.data.tables[entity], int(self.state.clock.now())
        if entity == "deals" and self.deal_limit is not None:
            live = sum(1 for i in table.ids() if not table.flags[i] & DELETED)
            if live >= self.deal_limit:
                return error(403, "You have reached the limit of deals for your plan",
                             "Upgrade the plan or delete deals to add more.", code="feature_capping_deals_limit")
        self._check_standard(entity, body, creating=True)
        custom = self._custom_values(entity, body)
        self._check_custom(entity, custom)
        status = STATUSES.index(body.get("status") or "open") if entity == "deals" else 0
        flags = ARCHIVED if entity == "leads" and body.get("is_archived") else 0
        rid = table.append(now, now, status, flags)
        row = self._defaults(entity, rid, now)
        row.update({k: v for k, v in body.items() if k not in READ_ONLY_KEYS and k not in ("status", "is_archived")})
        if entity != "leads" and entity in self.data.custom:
            row["custom_fields"] = {k: None for k in self.data.custom[entity]} | custom
        if entity == "deals":
            self._deal_status_times(row, status, now)
            if body.get("stage_id") is not None:
                row["pipeline_id"] = self.data.row("stages", body["stage_id"])["pipeline_id"]
        if entity == "leads":
            lead_id = str(uuid.UUID(int=self.state.random.getrandbits(128), version=4))
            table.uuid_of[rid], table.id_of[lead_id] = lead_id, rid
        table.rows[rid] = row
        self._indexed(entity, rid, None)
        self.data.version += 1
        # the published specs answer 201 for a new lead and 200 for everything else
        return ok(self.view(entity, rid), status=201 if entity == "leads" else 200)

    def _defaults(self, entity: str, rid: int, now: int) -> dict[str, Any]:
        if entity == "deals":
            return {"title": "", "owner_id": 1, "person_id": None, "org_id": None, "pipeline_id": 1, "stage_id": 1,
                    "value": 0.0, "currency": "USD", "stage_change_time": None, "probability": None,
                    "lost_reason": None, "visible_to": 3, "close_time": None, "won_time": None, "lost_time": None,
                    "expected_close_date": None, "label_ids": [], "origin": "API", "origin_id": None,
                    "channel": None, "channel_id": None, "source_lead_id": None}
        if entity == "persons":
            return {"name": "", "owner_id": 1, "org_id": None, "emails": [], "phones": [], "visible_to": 3,
                    "label_ids": []}
        if entity == "organizations":
            return {"name": "", "owner_id": 1, "visible_to": 3, "label_ids": [], "address": None, "website": None}
        if entity == "activities":
            return {"subject": "", "type": "task", "owner_id": 1, "creator_user_id": 1, "deal_id": None,
                    "person_id": None, "org_id": None, "due_date": None, "done": False, "busy": False,
                    "participants": [], "attendees": []}
        if entity == "products":
            return {"name": "", "code": None, "owner_id": 1, "is_linkable": True, "visible_to": 3, "prices": []}
        if entity == "leads":
            return {"title": "", "owner_id": 1, "creator_id": 1, "label_ids": [], "person_id": None,
                    "organization_id": None, "source_name": "API", "origin": "API", "origin_id": None,
                    "channel": None, "channel_id": None, "source_deal_id": None, "was_seen": False, "value": None,
                    "expected_close_date": None, "next_activity_id": None, "visible_to": "3",
                    "cc_email": "leads@sandbox.example"}
        if entity == "notes":
            return {"content": "", "user_id": 1, "deal_id": None, "person_id": None, "org_id": None,
                    "lead_id": None, "project_id": None, "task_id": None, "active_flag": True,
                    "pinned_to_deal_flag": False, "pinned_to_person_flag": False,
                    "pinned_to_organization_flag": False, "pinned_to_lead_flag": False,
                    "pinned_to_project_flag": False, "pinned_to_task_flag": False, "last_update_user_id": 1}
        return {"name": "", "order_nr": rid}

    @staticmethod
    def _deal_status_times(row: dict[str, Any], status: int, now: int) -> None:
        name = STATUSES[status]
        row["won_time"] = rfc3339(now) if name == "won" else None
        row["lost_time"] = rfc3339(now) if name == "lost" else None
        row["close_time"] = rfc3339(now) if name in ("won", "lost") else None

    def _update(self, entity: str, version: str, rid: int, body: Any) -> JSONResponse:
        if not isinstance(body, dict):
            raise bad_request("Validation failed: the request body must be a JSON object")
        if entity == "notes" and "content" in body and not str(body["content"]).strip():
            raise bad_request("Validation failed: content: must not be empty")
        self._check_standard(entity, body, creating=False)
        custom = self._custom_values(entity, body)
        self._check_custom(entity, custom)
        table, now = self.data.tables[entity], int(self.state.clock.now())
        before = self._texts(entity, rid) if table.exact_index is not None else None
        row = table.rows.get(rid)
        if row is None:
            row = table.rows[rid] = self.data.row(entity, rid)  # seeded: keep it from now on
        row.update({k: v for k, v in body.items() if k not in READ_ONLY_KEYS and k not in ("status", "is_archived")})
        if custom and entity != "leads":
            row["custom_fields"] = {**(row.get("custom_fields") or {}), **custom}
        if entity == "deals":
            if "status" in body and STATUSES.index(body["status"]) != table.status[rid]:
                table.status[rid] = STATUSES.index(body["status"])
                self._deal_status_times(row, table.status[rid], now)
            if "stage_id" in body:
                row["pipeline_id"] = self.data.row("stages", body["stage_id"])["pipeline_id"]
                row["stage_change_time"] = rfc3339(now)
        if entity in ("deals", "leads") and "is_archived" in body:
            if body["is_archived"]:
                table.flags[rid] |= ARCHIVED
            else:
                table.flags[rid] &= ~ARCHIVED & 0xFF
        table.update_time[rid] = now
        self._indexed(entity, rid, before)
        self.data.version += 1
        return ok(self.view(entity, rid))

    def _delete(self, entity: str, rid: int) -> JSONResponse:
        table, now = self.data.tables[entity], int(self.state.clock.now())
        before = self._texts(entity, rid) if table.exact_index is not None else None
        if entity in ("leads", "notes"):
            table.flags[rid] |= GONE  # v1: gone for good
            table.rows.pop(rid, None)
        else:
            table.flags[rid] |= DELETED  # v2: kept as deleted (deals are listed with status=deleted)
            if entity == "deals":
                table.status[rid] = STATUSES.index("deleted")
        table.update_time[rid] = now
        if before is not None and table.exact_index is not None:
            for text in before:
                table.exact_index.get(text, set()).discard(rid)
        self.data.version += 1
        if entity == "notes":
            return ok(True)
        if entity == "leads":
            return ok({"id": table.uuid_of[rid]})
        return ok({"id": rid})

    # -- search -------------------------------------------------------------------------------------
    def _texts(self, entity: str, rid: int, fields: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
        """(search field, lower-cased text) pairs of a record."""
        row = self.data.row(entity, rid)
        fields = fields or SEARCH_FIELDS[entity]
        out: list[tuple[str, str]] = []
        for field in fields:
            if field in ("name", "title", "code"):
                values: list[Any] = [row.get(field)]
            elif field == "email":
                values = [e.get("value") for e in row.get("emails") or []]
            elif field == "phone":
                values = [p.get("value") for p in row.get("phones") or []]
            elif field == "address":
                address = row.get("address")
                values = [address.get("value") if isinstance(address, dict) else address]
            elif field == "custom_fields":
                custom = row if entity == "leads" else row.get("custom_fields") or {}
                values = []
                for key, definition in self.data.custom[entity].items():
                    value = custom.get(key)
                    if definition["field_type"] not in SEARCHABLE_TYPES or value is None:
                        continue
                    values.append(value.get("value") if isinstance(value, dict) else value)
            else:  # notes: not indexed by the sandbox
                values = []
            out += [(field, _plain(v).strip().lower()) for v in values if v not in (None, "")]
        return out

    def _indexed(self, entity: str, rid: int, before: list[tuple[str, str]] | None) -> None:
        """Keep the exact-match index current after a write."""
        table = self.data.tables[entity]
        if entity not in SEARCHABLE or table.exact_index is None:
            return
        for text in before or []:
            table.exact_index.get(text, set()).discard(rid)
        for text in self._texts(entity, rid):
            table.exact_index.setdefault(text, set()).add(rid)

    def _exact_index(self, entity: str) -> dict[tuple[str, str], set[int]]:
        table = self.data.tables[entity]
        if table.exact_index is None:
            index: dict[tuple[str, str], set[int]] = {}
            for rid in table.ids():
                if table.flags[rid] & DELETED:
                    continue
                for text in self._texts(entity, rid):
                    index.setdefault(text, set()).add(rid)
            table.exact_index = index
        return table.exact_index

    def _search(self, entity: str | None, query: dict[str, str]) -> JSONResponse:
        term = (query.get("term") or "").strip()
        exact = (query.get("exact_match") or "false").lower() == "true"
        if len(term) < (1 if exact else 2):
            raise bad_request("Validation failed: term: the search term must be at least 2 characters long "
                              "(1 with exact_match=true)")
        limit = self._limit_param(query)
        if entity is None:
            types = [t for t in (query.get("item_types") or "").split(",") if t] or list(ITEM_TYPES)
            unknown = [t for t in types if t not in ITEM_TYPES]
            if unknown:
                raise bad_request(f"Validation failed: item_types: unsupported {unknown}")
            entities = [ITEM_TYPES[t] for t in types]
        else:
            entities = [entity]
        wanted = term.lower()
        found: list[tuple[float, str, int]] = []
        for ent in entities:
            allowed = SEARCH_FIELDS[ent]
            fields = tuple(f for f in (query.get("fields") or "").split(",") if f) or allowed
            if entity is not None and set(fields) - set(allowed):
                raise bad_request(f"Validation failed: fields: {sorted(set(fields) - set(allowed))} cannot be "
                                  f"searched; searchable: {', '.join(allowed)}")
            fields = tuple(f for f in fields if f in allowed)
            if exact:
                index = self._exact_index(ent)
                hits = set().union(*(index.get((f, wanted), set()) for f in fields))
                found += [(1.0, ent, rid) for rid in sorted(hits)]
                continue
            table = self.data.tables[ent]
            for rid in table.ids():
                if table.flags[rid] & DELETED:
                    continue
                texts = [t for _, t in self._texts(ent, rid, fields) if wanted in t]
                if texts:
                    found.append((round(min(1.0, 0.2 + len(wanted) / min(len(t) for t in texts)), 4), ent, rid))
        found.sort(key=lambda f: (-f[0], f[1], f[2]))
        start = offset_from_cursor(query)
        page = found[start : start + limit]
        items = [{"result_score": score,
                  "item": {k: v for k, v in self._search_item(ent, rid).items()
                           if v is not None or k in ("person", "organization")}}
                 for score, ent, rid in page]
        next_cursor = encode_cursor({"o": start + limit}) if start + limit < len(found) else None
        data: dict[str, Any] = {"items": items}
        if entity is None:
            data["related_items"] = []
        return ok(data, {"next_cursor": next_cursor})

    def _search_item(self, entity: str, rid: int) -> dict[str, Any]:
        row = self.data.row(entity, rid)
        owner = {"id": row.get("owner_id") or 1}
        custom_texts = [t for f, t in self._texts(entity, rid, ("custom_fields",))]
        org_id = row.get("org_id") or row.get("organization_id")
        organization = ({"id": org_id, "name": self.data.row("organizations", org_id).get("name"), "address": None}
                        if isinstance(org_id, int) and self.data.tables["organizations"].exists(org_id) else None)
        person_id = row.get("person_id")
        person = ({"id": person_id, "name": self.data.row("persons", person_id).get("name")}
                  if isinstance(person_id, int) and self.data.tables["persons"].exists(person_id) else None)
        table = self.data.tables[entity]
        if entity == "deals":
            stage_id = row.get("stage_id") or 1
            return {"id": rid, "type": "deal", "title": row.get("title"), "value": row.get("value"),
                    "currency": row.get("currency"), "status": STATUSES[table.status[rid]],
                    "visible_to": row.get("visible_to", 3), "owner": owner,
                    "stage": {"id": stage_id, "name": self.data.row("stages", stage_id)["name"]},
                    "person": person, "organization": organization, "custom_fields": custom_texts, "notes": [],
                    "is_archived": bool(table.flags[rid] & ARCHIVED)}
        if entity == "persons":
            return {"id": rid, "type": "person", "name": row.get("name"),
                    "phones": [p["value"] for p in row.get("phones") or []],
                    "emails": [e["value"] for e in row.get("emails") or []], "visible_to": row.get("visible_to", 3),
                    "owner": owner, "organization": organization, "custom_fields": custom_texts, "notes": []}
        if entity == "organizations":
            address = row.get("address")
            return {"id": rid, "type": "organization", "name": row.get("name"),
                    "address": address.get("value") if isinstance(address, dict) else address,
                    "visible_to": row.get("visible_to", 3), "owner": owner, "custom_fields": custom_texts,
                    "notes": []}
        if entity == "products":
            return {"id": rid, "type": "product", "name": row.get("name"), "code": row.get("code"),
                    "visible_to": row.get("visible_to", 3), "owner": owner, "custom_fields": custom_texts}
        value = row.get("value") or {}
        return {"id": table.uuid_of[rid], "type": "lead", "title": row.get("title"), "owner": owner,
                "person": person, "organization": organization, "phones": [], "emails": [],
                "custom_fields": custom_texts, "notes": [], "value": value.get("amount"),
                "currency": value.get("currency"), "visible_to": int(row.get("visible_to") or 3),
                "is_archived": bool(table.flags[rid] & ARCHIVED)}

    # -- fields -------------------------------------------------------------------------------------
    def _fields(self, version: str, entity: str, query: dict[str, str]) -> JSONResponse:
        defs = self.data.fields[entity]
        limit = self._limit_param(query)
        if version == "v2":
            start = offset_from_cursor(query)
            page = defs[start : start + limit]
            items = [self._field_v2(d) for d in page]
            next_cursor = encode_cursor({"o": start + limit}) if start + limit < len(defs) else None
            return ok(items, {"next_cursor": next_cursor})
        start = int(query.get("start") or 0)
        page = defs[start : start + limit]
        more = start + limit < len(defs)
        extra: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            extra["next_start"] = start + limit
        return ok([self._field_v1(d) for d in page], extra)

    def _subfields(self, definition: dict[str, Any]) -> list[dict[str, Any]] | None:
        key, name = definition["key"], definition["name"]
        if definition["field_type"] == "monetary":
            return [{"field_code": f"{key}_currency", "field_name": f"Currency of {name}", "field_type": "varchar"}]
        if definition["field_type"] == "address":
            return [{"field_code": f"{key}_{part}", "field_name": f"{label} of {name}", "field_type": "varchar"}
                    for part, label in (("locality", "City"), ("country", "Country"), ("postal_code", "ZIP code"))]
        return None

    def _field_v2(self, definition: dict[str, Any]) -> dict[str, Any]:
        return {"field_name": definition["name"], "field_code": definition["key"],
                "field_type": definition["field_type"], "options": definition["options"],
                "subfields": self._subfields(definition), "is_custom_field": definition["is_custom_field"],
                "is_optional_response_field": False,
                "ui_visibility": {"add_visible_flag": True, "details_visible_flag": True}}

    def _field_v1(self, definition: dict[str, Any]) -> dict[str, Any]:
        custom = definition["is_custom_field"]
        added = v1_time(self.data.now - 800 * DAY)
        subfields = [{"key": s["field_code"], "name": s["field_name"], "field_type": s["field_type"]}
                     for s in self._subfields(definition) or []]
        out = {"id": definition["id"], "key": definition["key"], "name": definition["name"],
                "order_nr": definition["order_nr"], "field_type": definition["field_type"], "add_time": added,
                "update_time": added, "last_updated_by_user_id": 1 if custom else None,
                "created_by_user_id": 1 if custom else None, "active_flag": True, "edit_flag": custom,
                "index_visible_flag": True, "details_visible_flag": True, "add_visible_flag": True,
                "important_flag": False, "bulk_edit_allowed": True,
                "searchable_flag": definition["field_type"] in SEARCHABLE_TYPES, "filtering_allowed": True,
                "sortable_flag": True, "mandatory_flag": definition["key"] in ("title", "name"),
                "options": definition["options"], "is_subfield": False}
        if subfields:  # "only present when the field has subfields"
            out["subfields"] = subfields
        return out

    # -- v1 extras ----------------------------------------------------------------------------------
    def _v1_record(self, entity: str, rid: int) -> dict[str, Any]:
        """The legacy v1 shape of a v2 entity (``recents``): linked ids as objects, custom fields at the top
        level, ``YYYY-MM-DD HH:MM:SS`` times."""
        if entity in V1_ENTITIES:
            return self.view(entity, rid)
        out = self.view(entity, rid)
        table = self.data.tables[entity]
        custom = out.pop("custom_fields", None) or {}
        for key, value in custom.items():
            if isinstance(value, dict) and "currency" in value:
                out[key], out[f"{key}_currency"] = value.get("value"), value.get("currency")
            elif isinstance(value, list):
                out[key] = ",".join(str(v) for v in value)
            else:
                out[key] = value
        out["add_time"], out["update_time"] = v1_time(table.add_time[rid]), v1_time(table.update_time[rid])
        out["active_flag"] = not out.pop("is_deleted", False)
        owner = next((u for u in USERS if u["id"] == out.get("owner_id")), None)
        if owner and entity in ("deals", "organizations"):
            out["owner_id"] = {
                "id": owner["id"], "name": owner["name"], "email": owner["email"], "has_pic": 0, "pic_hash": None,
                "active_flag": True, "value": owner["id"]}
            if entity == "deals":
                out["user_id"] = owner["id"]
        if "visible_to" in out:
            out["visible_to"] = str(out["visible_to"])
        if entity == "persons":
            out["email"], out["phone"] = out.pop("emails", []), out.pop("phones", [])
        if entity == "deals":
            out["active"] = out["status"] == "open"
            out["deleted"] = False
        return out

    def _thread_view(self, thread: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in thread.items() if k != "folder"}
        for name in ("add_time", "update_time"):
            out[name] = v1_time(thread[name])
        for name in ("last_message_timestamp", "first_message_timestamp", "last_message_received_timestamp"):
            out[name] = rfc3339(thread[name]).replace("Z", ".000Z")
        return out

    def _message_view(self, message: dict[str, Any]) -> dict[str, Any]:
        out = dict(message)
        for name in ("message_time", "add_time", "update_time"):
            out[name] = v1_time(message[name])
        return out

    def _mailbox(self, parts: list[str], query: dict[str, str]) -> JSONResponse:
        if parts[1:] == ["mailThreads"]:
            folder = query.get("folder")
            if folder not in ("inbox", "drafts", "sent", "archive"):
                raise bad_request("Validation failed: folder: Invalid enum value. Expected 'inbox' | 'drafts' | "
                                  "'sent' | 'archive'")
            limit = self._limit_param(query, default=50)
            start = int(query.get("start") or 0)
            threads = sorted((t for t in self.data.threads if t["folder"] == folder),
                             key=lambda t: (-t["update_time"], t["id"]))
            page = threads[start : start + limit]
            more = start + limit < len(threads)
            pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
            if more:
                pagination["next_start"] = start + limit
            return ok([self._thread_view(t) for t in page], {"pagination": pagination})
        if len(parts) == 4 and parts[1] == "mailThreads" and parts[3] == "mailMessages":
            if not parts[2].isdigit() or int(parts[2]) not in self.data.messages:
                raise ApiError(not_found())
            return ok([self._message_view(m) for m in self.data.messages[int(parts[2])]])
        if len(parts) == 3 and parts[1] == "mailThreads" and parts[2].isdigit():
            thread = next((t for t in self.data.threads if t["id"] == int(parts[2])), None)
            if thread is None:
                raise ApiError(not_found())
            return ok(self._thread_view(thread))
        raise ApiError(unknown_path())

    def _recents(self, query: dict[str, str]) -> JSONResponse:
        try:
            since = parse_time(query.get("since_timestamp") or "", "v1")
        except ValueError:
            raise bad_request("Validation failed: since_timestamp: Required, format YYYY-MM-DD HH:MM:SS") from None
        now = int(self.state.clock.now())
        since = max(since, now - 30 * DAY)  # Pipedrive keeps about one month of history
        kinds = [k for k in (query.get("items") or "deal,person,organization").split(",") if k]
        entity_of = {"deal": "deals", "person": "persons", "organization": "organizations", "product": "products",
                     "activity": "activities", "note": "notes", "lead": "leads"}
        if set(kinds) - set(entity_of):
            raise bad_request(f"Validation failed: items: unsupported {sorted(set(kinds) - set(entity_of))}")
        changed: list[tuple[int, str, int]] = []
        for kind in kinds:
            table = self.data.tables[entity_of[kind]]
            updated = table.update_time
            changed += [(updated[rid], kind, rid) for rid in range(1, table.next_id) if updated[rid] >= since]
        changed.sort()
        limit = self._limit_param(query)
        start = int(query.get("start") or 0)
        page = changed[start : start + limit]
        data = []
        for _, kind, rid in page:
            entity = entity_of[kind]
            table = self.data.tables[entity]
            gone = table.flags[rid] & (DELETED | GONE)
            record = None if gone else self._v1_record(entity, rid)
            data.append({"item": kind, "id": table.uuid_of.get(rid, rid) if entity == "leads" else rid,
                         "data": record})
        more = start + limit < len(changed)
        pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        return ok(data, {"since_timestamp": v1_time(since),
                         "last_timestamp_on_page": v1_time(page[-1][0]) if page else v1_time(since),
                         "pagination": pagination})


def sort_key_of(cursor: dict[str, Any]) -> tuple[int, int]:
    key = cursor["k"]
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, int) for k in key)):
        raise ValueError("bad cursor key")
    return key[0], key[1]
