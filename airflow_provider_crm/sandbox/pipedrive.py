"""Emulated Pipedrive REST API (v2 core entities, v1 leads/notes/users/mailbox, OAuth).

Routes under ``/pipedrive``: ``/api/v2/{deals,persons,organizations,activities,products,pipelines,stages}``
(+ ``/{entity}/search``, ``/itemSearch``, ``/deals/archived``, ``/{entity}Fields``), ``/api/v1/leads``,
``/api/v1/notes``, ``/api/v1/users/me``, ``/api/v1/recents``, ``/api/v1/mailbox/...``, ``/api/v1/*Fields``,
``POST /oauth/token``, and ``GET /_state/{entity}`` (no auth, every record including deleted, for tests).

Limits per token: the plan's burst per 2 s, search 10 / 2 s, 10,000 POST/PUT per day (API token),
the company's daily token budget charged by endpoint cost. ``x-ratelimit-*`` headers on every answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from airflow_provider_crm.common.ratelimit import pipedrive_token_cost
from airflow_provider_crm.sandbox.core import (
    DEFAULT_PIPEDRIVE_CLIENT,
    DEFAULT_PIPEDRIVE_REFRESH_TOKEN,
    SandboxState,
    SlidingWindow,
    token_key,
)

BURST = {"lite": (20, 80), "growth": (40, 160), "premium": (100, 400), "ultimate": (120, 480)}
ALIASES = {"essential": "lite", "advanced": "growth", "professional": "premium", "enterprise": "ultimate"}
MULTIPLIER = {"lite": 1, "growth": 2, "premium": 5, "ultimate": 7}
V2_ENTITIES = ("deals", "persons", "organizations", "activities", "products", "pipelines", "stages")
INCREMENTAL = {"deals", "persons", "organizations", "activities"}
FIELD_ENTITIES = {"dealFields": "deals", "personFields": "persons", "organizationFields": "organizations",
                  "productFields": "products", "activityFields": "activities"}
MAX_LIMIT = 500


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _v1_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _parse_time(text: str) -> float:
    text = text.strip().replace(" ", "T")
    if not text.endswith("Z") and "+" not in text[10:]:
        text += "Z"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _hash_key(seed: int, name: str) -> str:
    return hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()  # 40 hex characters, like Pipedrive's keys


def error(status: int, message: str, info: str = "", **extra: Any) -> JSONResponse:
    body = {"success": False, "error": message, "error_info": info or "Please check developers.pipedrive.com",
            "data": None, "additional_data": None, **extra}
    return JSONResponse(body, status_code=status)


class PipedriveData:
    """Records per entity, seeded deterministically; times follow the sandbox clock."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        cfg = state.config
        self.records: dict[str, dict[Any, dict[str, Any]]] = {e: {} for e in (*V2_ENTITIES, "leads", "notes")}
        self.next_id: dict[str, int] = {}
        self.threads: list[dict[str, Any]] = []
        self.messages: dict[int, list[dict[str, Any]]] = {}
        self.deal_limit: int | None = None
        self.version = 0  # bumped by every write; list results are cached per (query, version)
        self.fields = self._field_definitions(cfg.seed)
        self._seed()

    def new_id(self, entity: str) -> int:
        self.next_id[entity] = self.next_id.get(entity, 0) + 1
        return self.next_id[entity]

    @staticmethod
    def _field_definitions(seed: int) -> dict[str, list[dict[str, Any]]]:
        def custom(entity: str, name: str, ftype: str, options: list[str] | None = None) -> dict[str, Any]:
            d: dict[str, Any] = {"key": _hash_key(seed, f"{entity}:{name}"), "name": name, "field_type": ftype,
                                 "edit_flag": True, "is_custom_field": True}
            if options:
                d["options"] = [{"id": i + 1, "label": label} for i, label in enumerate(options)]
            return d

        def standard(name: str, key: str, ftype: str) -> dict[str, Any]:
            return {"key": key, "name": name, "field_type": ftype, "edit_flag": False, "is_custom_field": False}

        return {
            "deals": [standard("Title", "title", "varchar"), standard("Value", "value", "monetary"),
                      standard("Status", "status", "status"), standard("Stage", "stage_id", "stage"),
                      custom("deals", "Onboarding plan", "enum", ["Basic", "Pro", "Enterprise"]),
                      custom("deals", "Contract value", "monetary"), custom("deals", "Go-live date", "date"),
                      custom("deals", "Region", "set", ["EMEA", "AMER", "APAC"]),
                      custom("deals", "External id", "varchar"), custom("deals", "Seats", "double")],
            "persons": [standard("Name", "name", "varchar"), standard("Email", "emails", "varchar"),
                        standard("Phone", "phones", "phone"),
                        custom("persons", "Source", "enum", ["Web", "Event", "Referral"]),
                        custom("persons", "Customer id", "varchar"), custom("persons", "Lifetime value", "double")],
            "organizations": [standard("Name", "name", "varchar"),
                              custom("organizations", "Industry", "enum", ["SaaS", "Retail", "Finance"]),
                              custom("organizations", "Address", "address")],
            "products": [standard("Name", "name", "varchar"), custom("products", "SKU", "varchar")],
            "activities": [standard("Subject", "subject", "varchar"), custom("activities", "Outcome", "text")],
        }

    def custom_defs(self, entity: str) -> dict[str, dict[str, Any]]:
        return {d["key"]: d for d in self.fields.get(entity, []) if d["is_custom_field"]}

    def _seed(self) -> None:
        cfg, rnd, now = self.state.config, self.state.random, self.state.clock.now()
        stamps = lambda: (lambda added: (added, added + rnd.uniform(0, 10 * 86400)))(  # noqa: E731
            now - rnd.uniform(11 * 86400, 400 * 86400))
        pipeline = self.insert("pipelines", {"name": "Sales", "order_nr": 1, "is_deleted": False}, now - 500 * 86400)
        for i, name in enumerate(["Qualified", "Contact made", "Proposal", "Negotiation", "Won-ready"]):
            self.insert("stages", {"name": name, "order_nr": i + 1, "pipeline_id": pipeline["id"],
                                   "deal_probability": 20 * (i + 1), "is_deleted": False}, now - 500 * 86400)
        for n in range(1, cfg.pipedrive_organizations + 1):
            added, updated = stamps()
            self.insert("organizations", {"name": f"Org {n} Ltd", "owner_id": 1, "is_deleted": False,
                                          "custom_fields": {self._key("organizations", "Industry"): 1 + n % 3}},
                        added, updated)
        for n in range(1, cfg.pipedrive_persons + 1):
            added, updated = stamps()
            self.insert("persons", {
                "name": f"Person {n}", "owner_id": 1, "org_id": 1 + n % max(1, cfg.pipedrive_organizations),
                "emails": [{"value": f"person{n}@example.com", "primary": True, "label": "work"}],
                "phones": [{"value": f"+1555{n:07d}", "primary": True, "label": "work"}], "is_deleted": False,
                "custom_fields": {self._key("persons", "Source"): 1 + n % 3,
                                  self._key("persons", "Customer id"): f"C-{n:06d}"},
            }, added, updated)
        stage_ids = list(self.records["stages"])
        for n in range(1, cfg.pipedrive_deals + 1):
            added, updated = stamps()
            status = ("open", "open", "won", "lost")[n % 4]
            self.insert("deals", {
                "title": f"Deal {n}", "value": float(1000 + (n * 37) % 90_000), "currency": "USD", "status": status,
                "stage_id": stage_ids[n % len(stage_ids)], "pipeline_id": pipeline["id"], "owner_id": 1,
                "person_id": 1 + n % max(1, cfg.pipedrive_persons), "org_id": 1 + n % max(1, cfg.pipedrive_organizations),
                "is_deleted": False, "is_archived": n % 50 == 0,
                **({"won_time": _rfc3339(updated)} if status == "won" else {}),
                "custom_fields": {
                    self._key("deals", "Onboarding plan"): 1 + n % 3,
                    self._key("deals", "Contract value"): {"value": float(n * 10), "currency": "USD"},
                    self._key("deals", "Region"): [1 + n % 3],
                    self._key("deals", "External id"): f"EXT-{n:06d}",
                },
            }, added, updated)
        for n in range(1, 21):
            added, updated = stamps()
            self.insert("products", {"name": f"Product {n}", "code": f"P{n}", "is_deleted": False}, added, updated)
            self.insert("activities", {"subject": f"Call {n}", "type": "call", "deal_id": n, "done": n % 2 == 0,
                                       "is_deleted": False}, added, updated)
            self.insert("notes", {"content": f"Note {n}", "deal_id": n, "active_flag": True}, added, updated)
            lead_id = str(uuid.UUID(int=rnd.getrandbits(128)))
            self.records["leads"][lead_id] = {"id": lead_id, "title": f"Lead {n}", "owner_id": 1,
                                              "is_archived": False, "add_time": added, "update_time": updated}
        for n in range(1, cfg.pipedrive_mail_threads + 1):
            thread = {"id": n, "subject": f"Thread {n}", "folder": ("inbox", "sent", "archive", "drafts")[n % 4],
                      "message_count": 2, "parties": {"to": [{"email_address": f"person{n}@example.com"}]},
                      "add_time": _v1_time(now - n * 3600), "update_time": _v1_time(now - n * 1800)}
            self.threads.append(thread)
            self.messages[n] = [{"id": n * 10 + i, "mail_thread_id": n, "subject": thread["subject"],
                                 "snippet": f"Message {i} of thread {n}", "body_url": None,
                                 "from": [{"email_address": "sales@sandbox.example"}],
                                 "message_time": _v1_time(now - n * 3600 + i * 60)} for i in range(2)]

    def _key(self, entity: str, name: str) -> str:
        return next(d["key"] for d in self.fields[entity] if d["name"] == name)

    def insert(self, entity: str, data: dict[str, Any], added: float, updated: float | None = None) -> dict[str, Any]:
        rid = self.new_id(entity)
        record = {"id": rid, **data, "add_time": added, "update_time": updated if updated is not None else added}
        self.records[entity][rid] = record
        return record

    # -- views -----------------------------------------------------------------------------------
    @staticmethod
    def view(entity: str, record: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in record.items() if not k.startswith("_")}
        version_v1 = entity in ("leads", "notes")
        fmt = _v1_time if version_v1 else _rfc3339
        out["add_time"] = fmt(record["add_time"])
        out["update_time"] = fmt(record["update_time"])
        if entity == "leads":
            out["add_time"] = _rfc3339(record["add_time"]).replace("Z", ".000Z")
            out["update_time"] = _rfc3339(record["update_time"]).replace("Z", ".000Z")
        return out


class PipedriveService:
    """The /pipedrive routes over :class:`PipedriveData`, with auth, limits and headers."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.data = PipedriveData(state)
        self.windows: dict[str, SlidingWindow] = {}
        self.search_windows: dict[str, SlidingWindow] = {}
        self.daily: dict[tuple[str, str], float] = {}
        self.access_tokens: dict[str, float] = {}
        self.refresh_tokens = {DEFAULT_PIPEDRIVE_REFRESH_TOKEN}
        self._list_cache: dict[tuple, list[dict[str, Any]]] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/oauth/token", self.oauth_token, methods=["POST"]),
            Route("/_state/{entity}", self.full_state, methods=["GET"]),
            Route("/_state/settings", self.settings, methods=["PATCH"]),
            Route("/api/{version}/{path:path}", self.api, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    def snapshot(self) -> dict[str, Any]:
        return {"records": self.data.records, "next_id": self.data.next_id}

    def restore(self, data: dict[str, Any]) -> None:
        self.data.records, self.data.next_id = data["records"], data["next_id"]

    # -- control ---------------------------------------------------------------------------------
    async def full_state(self, request: Request) -> Response:
        entity = request.path_params["entity"]
        with self.state.lock:
            if entity not in self.data.records:
                return error(404, "unknown entity")
            return JSONResponse([self.data.view(entity, r) for r in self.data.records[entity].values()])

    async def settings(self, request: Request) -> Response:
        body = await request.json()
        with self.state.lock:
            if "deal_limit" in body:
                self.data.deal_limit = body["deal_limit"]
        return JSONResponse({"deal_limit": self.data.deal_limit})

    async def oauth_token(self, request: Request) -> Response:
        form = dict(await request.form())
        auth = request.headers.get("authorization", "")
        client = base64.b64decode(auth[6:]).decode().partition(":") if auth.lower().startswith("basic ") else ("",)
        if (client[0], client[-1]) != DEFAULT_PIPEDRIVE_CLIENT:
            return JSONResponse({"success": False, "message": "Invalid client"}, status_code=401)
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") not in self.refresh_tokens:
            return JSONResponse({"success": False, "message": "Invalid grant: refresh token is invalid"},
                                status_code=400)
        with self.state.lock:
            self.refresh_tokens.discard(str(form["refresh_token"]))
            new_refresh = "rt-" + secrets.token_hex(12)
            self.refresh_tokens.add(new_refresh)
            access = "at-" + secrets.token_hex(16)
            self.access_tokens[access] = self.state.clock.now() + 3600
        base = str(request.base_url).rstrip("/") + "/pipedrive"
        return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                             "refresh_token": new_refresh, "scope": "base,deals:full", "api_domain": base})

    # -- auth and limits -------------------------------------------------------------------------
    def _identify(self, request: Request) -> tuple[str, str, str] | None:
        """(token, plan, auth type) or None."""
        cfg = self.state.config
        token = request.headers.get("x-api-token") or request.query_params.get("api_token")
        if token and token in cfg.pipedrive_tokens:
            return token, ALIASES.get(cfg.pipedrive_tokens[token], cfg.pipedrive_tokens[token]), "token"
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            bearer = auth[7:]
            if self.access_tokens.get(bearer, 0) > self.state.clock.now():
                default_plan = next(iter(cfg.pipedrive_tokens.values()), "ultimate")
                return bearer, ALIASES.get(default_plan, default_plan), "oauth"
        return None

    def _limit(self, token: str, plan: str, auth_type: str, method: str, version: str, path: str
               ) -> tuple[dict[str, str], JSONResponse | None]:
        cfg, now, key = self.state.config, self.state.clock.now(), token_key(token)
        burst = BURST[plan][1 if auth_type == "oauth" else 0]
        window = self.windows.setdefault(key, SlidingWindow(burst, 2.0))
        seen = window.hit(now)
        self.state.counters.note_window(f"pipedrive:{key}", seen)
        headers = {"x-ratelimit-limit": str(burst), "x-ratelimit-remaining": str(max(0, burst - seen)),
                   "x-ratelimit-reset": str(max(1, round(window.reset_in(now))))}
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        budget = 30_000 * MULTIPLIER[plan] * cfg.pipedrive_seats
        spent = self.daily.get(("budget", day), 0)
        headers["x-daily-ratelimit-token-limit"] = str(budget)
        if seen > burst:
            return headers, error(429, "request over limit", errorCode=429)
        if path.endswith("/search") or path == "itemSearch":
            search = self.search_windows.setdefault(key, SlidingWindow(10, 2.0))
            if search.hit(now) > 10:
                return headers, error(429, "request over limit", errorCode=429)
        cost = pipedrive_token_cost(method, path, version)  # the specs' x-token-cost, as the real API charges
        if spent + cost > budget:
            headers["x-daily-ratelimit-token-remaining"] = str(max(0, int(budget - spent)))
            return headers, error(429, "request over limit", "Daily token budget spent", errorCode=429)
        self.daily[("budget", day)] = spent + cost
        headers["x-daily-ratelimit-token-remaining"] = str(int(budget - spent - cost))
        if method in ("POST", "PUT") and auth_type == "token":
            writes = self.daily.get((f"writes:{key}", day), 0)
            if writes >= 10_000:
                return headers, error(429, "request over limit", "Daily POST/PUT allowance spent", errorCode=429)
            self.daily[(f"writes:{key}", day)] = writes + 1
            headers["x-daily-requests-left"] = str(10_000 - writes - 1)
        return headers, None

    async def api(self, request: Request) -> Response:
        version, path, method = request.path_params["version"], request.path_params["path"].strip("/"), request.method
        if version not in ("v1", "v2"):
            return error(404, "Unknown method .")
        ident = self._identify(request)
        if ident is None:
            return JSONResponse({"success": False, "error": "unauthorized access", "errorCode": 401,
                                 "error_info": "Please check developers.pipedrive.com"}, status_code=401)
        token, plan, auth_type = ident
        body: Any = None
        if method in ("POST", "PUT", "PATCH"):
            try:
                body = await request.json()
            except ValueError:
                return error(400, "Invalid JSON body")
        with self.state.lock:
            self.state.counters.count_request("pipedrive", f"{method} /{version}/{path.split('/')[0]}", token)
            headers, refusal = self._limit(token, plan, auth_type, method, version, path)
            if refusal is not None:
                self.state.counters.count_429("pipedrive")
                refusal.headers.update(headers)
                return refusal
            if method != "GET":
                self.data.version += 1
            response = self._dispatch(method, version, path, dict(request.query_params), body)
        response.headers.update(headers)
        return response

    # -- endpoints -------------------------------------------------------------------------------
    def _dispatch(self, method: str, version: str, path: str, query: dict[str, str], body: Any) -> JSONResponse:
        parts = path.split("/")
        head = parts[0]
        if version == "v1" and path == "users/me":
            return JSONResponse({"success": True, "data": {
                "id": 1, "name": "Sandbox Admin", "email": "admin@sandbox.example", "company_id": 1,
                "company_name": "Sandbox Inc", "company_domain": "sandbox", "active_flag": True, "is_admin": 1}})
        if head in FIELD_ENTITIES and len(parts) == 1 and method == "GET":
            return self._fields(version, FIELD_ENTITIES[head], query)
        if version == "v1" and head == "mailbox":
            return self._mailbox(parts, query)
        if version == "v1" and head == "recents":
            return self._recents(query)
        if version == "v2" and head == "itemSearch":
            return self._search(None, query)
        entity_ok = (version == "v2" and head in V2_ENTITIES) or (version == "v1" and head in ("leads", "notes"))
        if not entity_ok:
            if version == "v1" and head in V2_ENTITIES:
                return error(410, "This endpoint is no longer supported", "Use the v2 endpoint")
            return error(404, "Unknown method .")
        entity = head
        if len(parts) == 1:
            if method == "GET":
                return self._list(entity, version, query, archived=False)
            if method == "POST":
                return self._create(entity, version, body)
        elif len(parts) == 2 and parts[1] == "search" and method == "GET":
            return self._search(entity, query)
        elif len(parts) == 2 and parts[1] == "archived" and method == "GET" and entity == "deals":
            return self._list(entity, version, query, archived=True)
        elif len(parts) == 2:
            rid: Any = parts[1] if entity == "leads" else (int(parts[1]) if parts[1].isdigit() else None)
            record = self.data.records[entity].get(rid)
            if record is None or (record.get("is_deleted") and method != "GET"):
                return error(404, "Entity was not found", "Object was not found.")
            if method == "GET":
                return JSONResponse({"success": True, "data": self.data.view(entity, record)})
            if method in ("PATCH", "PUT"):
                return self._update(entity, version, record, body)
            if method == "DELETE":
                return self._delete(entity, record)
        return error(404, "Unknown method .")

    def _page(self, items: list[dict[str, Any]], entity: str, version: str, query: dict[str, str]) -> JSONResponse:
        try:
            limit = int(query.get("limit", 100))
        except ValueError:
            return error(400, "Parameter 'limit' must be an integer")
        if limit > MAX_LIMIT or limit < 1:
            return error(400, f"Parameter 'limit' must be between 1 and {MAX_LIMIT}")
        if version == "v2":
            start = 0
            if query.get("cursor"):
                try:
                    start = int(json.loads(base64.b64decode(query["cursor"]))["o"])
                except Exception:
                    return error(400, "Invalid cursor")
            page = items[start : start + limit]
            more = start + limit < len(items)
            cursor = base64.b64encode(json.dumps({"o": start + limit}).encode()).decode() if more else None
            return JSONResponse({"success": True, "data": [self.data.view(entity, r) for r in page],
                                 "additional_data": {"next_cursor": cursor}})
        start = int(query.get("start", 0))
        page = items[start : start + limit]
        more = start + limit < len(items)
        return JSONResponse({"success": True, "data": [self.data.view(entity, r) for r in page],
                             "additional_data": {"pagination": {"start": start, "limit": limit,
                                                                "more_items_in_collection": more,
                                                                **({"next_start": start + limit} if more else {})}}})

    def _list(self, entity: str, version: str, query: dict[str, str], archived: bool) -> JSONResponse:
        # paging through a large list must not re-filter it for every page
        key = (entity, version, archived, self.data.version, int(self.state.clock.now()) // 86400,
               tuple(sorted((k, v) for k, v in query.items() if k not in ("cursor", "start", "limit"))))
        cached = self._list_cache.get(key)
        if cached is not None:
            return self._page(cached, entity, version, query)
        response = self._filtered(entity, version, query, archived)
        if isinstance(response, JSONResponse):
            return response
        if len(self._list_cache) > 32:
            self._list_cache.clear()
        self._list_cache[key] = response
        return self._page(response, entity, version, query)

    def _filtered(self, entity: str, version: str, query: dict[str, str], archived: bool
                  ) -> list[dict[str, Any]] | JSONResponse:
        records = list(self.data.records[entity].values())
        if entity in ("pipelines", "stages") and ("updated_since" in query or "updated_until" in query):
            return error(400, "Parameter 'updated_since' is not allowed for this endpoint")
        now = self.state.clock.now()
        statuses = set(query.get("status", "").split(",")) - {""}
        if entity == "deals":
            if "deleted" in statuses:
                records = [r for r in records if r.get("is_deleted") and now - r["update_time"] <= 30 * 86400]
                statuses.discard("deleted")
                if statuses:
                    return error(400, "status=deleted cannot be combined with other statuses")
            else:
                records = [r for r in records if not r.get("is_deleted")]
                records = [r for r in records if bool(r.get("is_archived")) == archived]
                if statuses:
                    records = [r for r in records if r.get("status") in statuses]
        else:
            records = [r for r in records if not r.get("is_deleted")]
        try:
            if query.get("updated_since"):
                since = _parse_time(query["updated_since"])
                records = [r for r in records if int(r["update_time"]) >= since]
            if query.get("updated_until"):
                until = _parse_time(query["updated_until"])
                records = [r for r in records if int(r["update_time"]) < until]
        except ValueError:
            return error(400, "Invalid date format for updated_since/updated_until (use RFC 3339)")
        for name in ("pipeline_id", "stage_id", "owner_id", "person_id", "org_id", "deal_id"):
            if query.get(name):
                records = [r for r in records if str(r.get(name)) == query[name]]
        if query.get("ids"):
            wanted = {int(i) for i in query["ids"].split(",") if i.isdigit()}
            records = [r for r in records if r["id"] in wanted]
        sort_by = query.get("sort_by", "id")
        if query.get("sort"):
            sort_by = "update_time" if "update_time" in query["sort"] else "id"
            reverse = "DESC" in query["sort"].upper()
        else:
            reverse = query.get("sort_direction", "asc") == "desc"
        if sort_by not in ("id", "update_time", "add_time"):
            return error(400, f"Invalid sort_by {sort_by!r}")
        order = (lambda r: r["id"]) if sort_by == "id" else (lambda r: (int(r[sort_by]), str(r["id"])))
        records.sort(key=order, reverse=reverse)
        return records

    def _validate(self, entity: str, body: dict[str, Any]) -> JSONResponse | None:
        defs = self.data.custom_defs(entity)
        custom = body.get("custom_fields") if entity != "leads" else {k: v for k, v in body.items() if len(k) == 40}
        for key, value in (custom or {}).items():
            definition = defs.get(key)
            if definition is None:
                return error(400, f"Unknown custom field key {key!r}")
            if value is None:
                continue
            ftype = definition["field_type"]
            ok = True
            if ftype == "double":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif ftype == "monetary":
                ok = isinstance(value, dict) and isinstance(value.get("value"), (int, float))
            elif ftype == "enum":
                ok = value in {o["id"] for o in definition.get("options", [])}
            elif ftype == "set":
                ok = isinstance(value, list) and all(v in {o["id"] for o in definition["options"]} for v in value)
            elif ftype == "date":
                try:
                    datetime.strptime(str(value), "%Y-%m-%d")
                except ValueError:
                    ok = False
            elif ftype in ("varchar", "text", "address", "phone"):
                ok = isinstance(value, str)
            if not ok:
                return error(400, f"Invalid value for field {definition['name']!r} ({ftype}): {value!r}")
        return None

    def _create(self, entity: str, version: str, body: Any) -> JSONResponse:
        if not isinstance(body, dict):
            return error(400, "Body must be a JSON object")
        if entity == "deals" and self.data.deal_limit is not None and \
                sum(1 for r in self.data.records["deals"].values() if not r.get("is_deleted")) >= self.data.deal_limit:
            return error(403, "You have reached the limit of deals for your plan", code="feature_capping_deals_limit")
        required = {"deals": "title", "persons": "name", "organizations": "name", "products": "name",
                    "activities": "subject", "leads": "title", "notes": "content", "pipelines": "name",
                    "stages": "name"}.get(entity)
        if required and not body.get(required):
            return error(400, f"Field '{required}' is required")
        if entity == "persons" and isinstance(body.get("emails"), str):
            return error(400, "Field 'emails' must be an array of objects")
        invalid = self._validate(entity, body)
        if invalid:
            return invalid
        now = self.state.clock.now()
        if entity == "leads":
            rid = str(uuid.UUID(int=self.state.random.getrandbits(128)))
            record = {"id": rid, **body, "is_archived": False, "add_time": now, "update_time": now}
            self.data.records["leads"][rid] = record
        else:
            record = self.data.insert(entity, {"is_deleted": False, **body}, now)
            if entity == "deals":
                record.setdefault("status", "open")
        # the published specs answer 201 for a new lead and 200 for everything else
        return JSONResponse({"success": True, "data": self.data.view(entity, record)},
                            status_code=201 if entity == "leads" else 200)

    def _update(self, entity: str, version: str, record: dict[str, Any], body: Any) -> JSONResponse:
        if not isinstance(body, dict):
            return error(400, "Body must be a JSON object")
        invalid = self._validate(entity, body)
        if invalid:
            return invalid
        custom = body.pop("custom_fields", None)
        record.update({k: v for k, v in body.items() if k not in ("id", "add_time", "update_time")})
        if custom:
            record.setdefault("custom_fields", {}).update(custom)
        if entity == "deals" and body.get("status") == "won":
            record["won_time"] = _rfc3339(self.state.clock.now())
        record["update_time"] = self.state.clock.now()
        return JSONResponse({"success": True, "data": self.data.view(entity, record)})

    def _delete(self, entity: str, record: dict[str, Any]) -> JSONResponse:
        if entity == "deals":
            record["is_deleted"] = True
            record["status"] = "deleted"
            record["update_time"] = self.state.clock.now()
        else:
            del self.data.records[entity][record["id"]]
        if entity == "notes":
            return JSONResponse({"success": True, "data": True})
        return JSONResponse({"success": True, "data": {"id": record["id"]}})

    def _search(self, entity: str | None, query: dict[str, str]) -> JSONResponse:
        term = query.get("term", "")
        exact = query.get("exact_match", "false").lower() == "true"
        if len(term) < (1 if exact else 2):
            return error(400, "Search term must be at least 2 characters long (1 with exact_match)")
        fields = set(query.get("fields", "").split(",")) - {""}
        entities = [entity] if entity else ["deals", "persons", "organizations"]
        items = []
        wanted = term.lower()
        for ent in entities:
            custom_keys = set(self.data.custom_defs(ent))
            for record in self.data.records[ent].values():
                if record.get("is_deleted"):
                    continue
                candidates: list[Any] = []
                if not fields or "name" in fields or "title" in fields:
                    candidates += [record.get("name"), record.get("title")]
                if not fields or "email" in fields:
                    candidates += [e.get("value") for e in record.get("emails") or []]
                if not fields or "phone" in fields:
                    candidates += [p.get("value") for p in record.get("phones") or []]
                if not fields or "custom_fields" in fields:
                    candidates += [v for k, v in (record.get("custom_fields") or {}).items()
                                   if k in custom_keys and isinstance(v, (str, int, float))]
                texts = [str(c).lower() for c in candidates if c is not None]
                hit = wanted in texts if exact else any(wanted in t for t in texts)
                if hit:
                    item = {"id": record["id"], "type": ent[:-1], "name": record.get("name") or record.get("title")}
                    items.append({"result_score": 1.0 if exact else 0.5, "item": item})
        limit = min(int(query.get("limit", 100)), MAX_LIMIT)
        return JSONResponse({"success": True, "data": {"items": items[:limit]},
                             "additional_data": {"next_cursor": None}})

    def _fields(self, version: str, entity: str, query: dict[str, str]) -> JSONResponse:
        defs = self.data.fields.get(entity, [])
        if version == "v2":
            items = [{"field_code": d["key"], "field_name": d["name"], "field_type": d["field_type"],
                      "is_custom_field": d["is_custom_field"], "options": d.get("options")} for d in defs]
            return JSONResponse({"success": True, "data": items, "additional_data": {"next_cursor": None}})
        items = [{"id": i + 1, **d} for i, d in enumerate(defs)]
        return JSONResponse({"success": True, "data": items, "additional_data": {"pagination": {
            "start": 0, "limit": 500, "more_items_in_collection": False}}})

    def _mailbox(self, parts: list[str], query: dict[str, str]) -> JSONResponse:
        if parts[1:2] == ["mailThreads"] and len(parts) == 2:
            folder = query.get("folder", "inbox")
            if folder not in ("inbox", "drafts", "sent", "archive"):
                return error(400, "Invalid folder")
            threads = [t for t in self.data.threads if t["folder"] == folder]
            start, limit = int(query.get("start", 0)), int(query.get("limit", 50))
            page = threads[start : start + limit]
            more = start + limit < len(threads)
            return JSONResponse({"success": True, "data": page, "additional_data": {"pagination": {
                "start": start, "limit": limit, "more_items_in_collection": more,
                **({"next_start": start + limit} if more else {})}}})
        if len(parts) == 4 and parts[1] == "mailThreads" and parts[3] == "mailMessages" and parts[2].isdigit():
            thread_id = int(parts[2])
            if thread_id not in self.data.messages:
                return error(404, "Entity was not found", "Object was not found.")
            return JSONResponse({"success": True, "data": self.data.messages[thread_id]})
        return error(404, "Unknown method .")

    def _recents(self, query: dict[str, str]) -> JSONResponse:
        try:
            since = _parse_time(query["since_timestamp"])
        except (KeyError, ValueError):
            return error(400, "Parameter 'since_timestamp' is required (YYYY-MM-DD HH:MM:SS)")
        items = query.get("items", "deal")
        entity = {"deal": "deals", "person": "persons", "organization": "organizations"}.get(items, "deals")
        data = [{"item": items, "id": r["id"], "data": None if r.get("is_deleted") else self.data.view(entity, r)}
                for r in self.data.records[entity].values() if r["update_time"] >= since]
        return JSONResponse({"success": True, "data": data, "additional_data": {"pagination": {
            "start": 0, "limit": len(data), "more_items_in_collection": False}}})
