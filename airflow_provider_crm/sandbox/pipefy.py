"""Emulated Pipefy GraphQL API: graphql-core over an SDL schema with Pipefy's names.

Routes (under ``/pipefy``): ``POST /graphql``, ``POST /oauth/token``, ``GET /_state`` (full state,
no auth, for tests). Limits per token: a sliding window (500 / 30 s), then HTTP 429 and a block
(5 minutes); a monthly call quota per plan. Errors come back in Pipefy's shape: HTTP 200 with
``errors[].extensions.code`` and ``correlation_id``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from typing import Any

from graphql import GraphQLError, build_schema, execute_sync, parse, validate
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from airflow_provider_crm.sandbox.core import (
    DEFAULT_PIPEFY_CLIENT,
    SandboxState,
    SlidingWindow,
    token_key,
)

MONTHLY_QUOTA = {"starter": 20, "business": 500, "enterprise": 10_000, "unlimited": None}
MAX_PAGE = 50  # larger `first` values are capped silently (unconfirmed on the real API; documented)
LIST_TYPES = {"checklist_vertical", "checklist_horizontal", "assignee_select", "label_select", "connector",
              "attachment"}
SCHEMA = build_schema(resources.files("airflow_provider_crm.sandbox").joinpath("pipefy_schema.graphql").read_text())


class PipefyFault(GraphQLError):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, extensions={"code": code, "correlation_id": str(uuid.uuid4())})


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cursor(offset: int) -> str:
    return base64.b64encode(json.dumps([offset]).encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(json.loads(base64.b64decode(cursor))[0]) + 1
    except Exception:
        raise PipefyFault(f"Invalid cursor: {cursor}", "INVALID_INPUT") from None


def connection(items: list[Any], first: int | None, after: str | None, build: Any) -> dict[str, Any]:
    start = _offset(after)
    size = min(first or MAX_PAGE, MAX_PAGE)
    page = items[start : start + size]
    edges = [{"cursor": _cursor(start + i), "node": build(item)} for i, item in enumerate(page)]
    return {
        "pageInfo": {
            "hasNextPage": start + size < len(items),
            "endCursor": edges[-1]["cursor"] if edges else None,
            "hasPreviousPage": start > 0,
            "startCursor": edges[0]["cursor"] if edges else None,
        },
        "edges": edges,
        "totalCount": len(items),
    }


class PipefyData:
    """Pipes, phases, cards, tables and records, seeded deterministically."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.users = [
            {"id": "901", "name": "Ada Admin", "email": "ada@sandbox.example"},
            {"id": "902", "name": "Bo Builder", "email": "bo@sandbox.example"},
        ]
        self.pipes: dict[str, dict[str, Any]] = {}
        self.phases: dict[str, dict[str, Any]] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self.tables: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.comments: list[dict[str, Any]] = []
        self.next_id = 100_000
        self.version = 0  # bumped by every mutation
        self._seed()

    def new_id(self) -> str:
        self.next_id += 1
        return str(self.next_id)

    # -- seed ------------------------------------------------------------------------------------
    def _seed(self) -> None:
        cfg = self.state.config
        rnd = self.state.random
        now = self.state.clock.now()
        labels = [{"id": "501", "name": "Urgent"}, {"id": "502", "name": "VIP"}]
        start_fields = [
            {"id": "customer_name", "label": "Customer name", "type": "short_text", "required": True},
            {"id": "email", "label": "Email", "type": "email", "required": False},
            {"id": "deal_value", "label": "Deal value", "type": "currency", "required": False},
            {"id": "start_date", "label": "Start date", "type": "date", "required": False},
            {"id": "kickoff_at", "label": "Kickoff at", "type": "datetime", "required": False},
            {"id": "plan", "label": "Plan", "type": "select", "required": False,
             "options": ["Basic", "Pro", "Enterprise"]},
            {"id": "checklist", "label": "Checklist", "type": "checklist_vertical", "required": False,
             "options": ["Contract", "Invoice", "Training"]},
            {"id": "owner", "label": "Owner", "type": "assignee_select", "required": False},
            {"id": "pipedrive_deal_id", "label": "Pipedrive deal id", "type": "short_text", "required": False},
            {"id": "seats", "label": "Seats", "type": "number", "required": False},
        ]
        review_fields = [{"id": "review_notes", "label": "Review notes", "type": "long_text", "required": True}]
        self._add_pipe("301", "Customer onboarding", start_fields, labels, [
            ("3011", "Backlog", False, [], ["3012", "3015"]),
            ("3012", "Doing", False, [], ["3013", "3011", "3015"]),
            ("3013", "Review", False, review_fields, ["3014", "3012"]),
            ("3014", "Done", True, [], []),
            ("3015", "Cancelled", True, [], ["3011"]),
        ])
        ticket_fields = [
            {"id": "requester", "label": "Requester", "type": "email", "required": False},
            {"id": "priority", "label": "Priority", "type": "select", "required": False,
             "options": ["Low", "Normal", "High"]},
            {"id": "hours", "label": "Hours", "type": "number", "required": False},
        ]
        phase_names = ["New", "Triage", "In progress", "Waiting", "Resolved", "Closed"]
        self._add_pipe("302", "Support tickets", ticket_fields, labels, [
            (str(3021 + i), name, name == "Closed", [], [str(3021 + j) for j in range(6) if j != i])
            for i, name in enumerate(phase_names)
        ])
        # a pipe only the default personal token may see (service accounts are not members)
        self._add_pipe("303", "Private finance", [], [], [("3031", "Open", False, [], [])])
        self.pipes["303"]["private"] = True

        per_phase = cfg.pipefy_cards_per_phase
        for phase_id in ("3011", "3012", "3013"):
            for _ in range(per_phase):
                n = len(self.cards) + 1
                created = now - rnd.uniform(2 * 86400, 60 * 86400)
                self._seed_card("301", phase_id, f"Onboarding #{n}", created, {
                    "customer_name": f"Customer {n}",
                    "email": f"customer{n}@example.com",
                    "deal_value": round(rnd.uniform(500, 50_000), 2),
                    "start_date": (date(2026, 1, 1) + timedelta(days=n % 300)).isoformat(),
                    "plan": rnd.choice(["Basic", "Pro", "Enterprise"]),
                    "checklist": rnd.sample(["Contract", "Invoice", "Training"], k=rnd.randint(0, 3)),
                    "seats": float(rnd.randint(1, 50)),
                })
        for i in range(6):
            phase_id = str(3021 + i)
            for _ in range(per_phase):
                n = len(self.cards) + 1
                created = now - rnd.uniform(2 * 86400, 60 * 86400)
                self._seed_card("302", phase_id, f"Ticket #{n}", created, {
                    "requester": f"user{n}@example.com",
                    "priority": ("Low", "Normal", "High")[n % 3],
                    "hours": float(n % 17),
                })
        self.tables["401"] = {
            "id": "401", "name": "Customers",
            "table_fields": [
                {"id": "company", "label": "Company", "type": "short_text", "required": True},
                {"id": "contact_email", "label": "Contact email", "type": "email", "required": False},
                {"id": "tier", "label": "Tier", "type": "select", "required": False, "options": ["Gold", "Silver"]},
            ],
        }
        for n in range(1, cfg.pipefy_table_records + 1):
            rid = self.new_id()
            ts = now - rnd.uniform(86400, 90 * 86400)
            self.records[rid] = {"id": rid, "table_id": "401", "title": f"Company {n}", "created_at": ts,
                                 "updated_at": ts, "values": {"company": f"Company {n}",
                                                              "contact_email": f"c{n}@example.com",
                                                              "tier": ("Gold", "Silver")[n % 2]}}

    def _add_pipe(self, pipe_id: str, name: str, start_fields: list, labels: list, phases: list) -> None:
        start_id = f"{pipe_id}0"
        self.phases[start_id] = {"id": start_id, "name": "Start form", "pipe_id": pipe_id, "done": False,
                                 "fields": start_fields, "moves": [p[0] for p in phases[:1]], "start": True}
        for phase_id, phase_name, done, fields, moves in phases:
            self.phases[phase_id] = {"id": phase_id, "name": phase_name, "pipe_id": pipe_id, "done": done,
                                     "fields": fields, "moves": moves}
        self.pipes[pipe_id] = {"id": pipe_id, "uuid": str(uuid.UUID(int=int(pipe_id))), "name": name,
                               "startFormPhaseId": start_id, "phase_ids": [p[0] for p in phases], "labels": labels}

    def _seed_card(self, pipe_id: str, phase_id: str, title: str, created: float, values: dict[str, Any]) -> None:
        cid = self.new_id()
        updated = created + self.state.random.uniform(0, 86400)
        self.cards[cid] = {"id": cid, "title": title, "pipe_id": pipe_id, "phase_id": phase_id,
                           "values": {k: (v, updated) for k, v in values.items()},
                           "createdAt": created, "updated_at": updated, "finished_at": None,
                           "history": [(phase_id, created, None)], "assignee_ids": [], "label_ids": [],
                           "due_date": None}

    # -- fields ----------------------------------------------------------------------------------
    def pipe_fields(self, pipe_id: str) -> dict[str, dict[str, Any]]:
        # phases' fields never change after seeding: computed once per pipe
        cache = self.__dict__.setdefault("_fields_cache", {})
        if pipe_id in cache:
            return cache[pipe_id]
        out: dict[str, dict[str, Any]] = {}
        pipe = self.pipes[pipe_id]
        for phase_id in [pipe["startFormPhaseId"], *pipe["phase_ids"]]:
            for field in self.phases[phase_id]["fields"]:
                out[field["id"]] = field
        cache[pipe_id] = out
        return out

    def cards_in_phase(self, phase_id: str) -> list[dict[str, Any]]:
        """Cards of a phase, indexed once per data version (pages of a big phase stay cheap)."""
        version = (len(self.cards), self.version)
        if self.__dict__.get("_phase_index_version") != version:
            index: dict[str, list[dict[str, Any]]] = {}
            for card in self.cards.values():
                index.setdefault(card["phase_id"], []).append(card)
            self.__dict__["_phase_index"] = index
            self.__dict__["_phase_index_version"] = version
        return self.__dict__["_phase_index"].get(phase_id, [])

    def coerce(self, field: dict[str, Any], value: Any) -> Any:
        """Parse a written value by field type; reject what does not fit, naming field and value."""
        ftype = field["type"]
        bad = PipefyFault(f"Field {field['label']!r} ({ftype}): invalid value {value!r}", "INVALID_INPUT")
        if value is None or value == "" or value == []:
            return None
        if ftype in LIST_TYPES:
            if isinstance(value, str):
                try:
                    value = json.loads(value) if value.startswith("[") else [value]
                except ValueError:
                    raise bad from None
            if not isinstance(value, list):
                value = [value]
            items = [str(v) for v in value]
            if field.get("options") and any(i not in field["options"] for i in items):
                raise bad
            return items
        if isinstance(value, (list, dict)):
            raise bad
        text = str(value).strip()
        if ftype in ("number", "currency"):
            try:
                return float(text.replace(",", ".")) if text.count(",") == 1 and "." not in text else float(text)
            except ValueError:
                raise bad from None
        if ftype == "date":
            for fmt in ("%Y-%m-%d", "%d/%m/%Y"):
                try:
                    return datetime.strptime(text[:10], fmt).date().isoformat()
                except ValueError:
                    continue
            raise bad
        if ftype in ("datetime", "due_date"):
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise bad from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if ftype == "time":
            if len(text) != 5 or text[2] != ":":
                raise bad
            return text
        if ftype in ("select", "radio_vertical", "radio_horizontal") and field.get("options") and \
                text not in field["options"]:
            raise bad
        if ftype == "email" and "@" not in text:
            raise bad
        return text

    @staticmethod
    def read_value(field: dict[str, Any], stored: Any, filled_at: float) -> dict[str, Any]:
        ftype = field["type"]
        out: dict[str, Any] = {"field": field, "name": field["label"], "array_value": None, "date_value": None,
                               "datetime_value": None, "float_value": None, "filled_at": _iso(filled_at),
                               "updated_at": _iso(filled_at)}
        if ftype in LIST_TYPES:
            out["array_value"] = stored
            out["value"] = json.dumps(stored)
        elif ftype in ("number", "currency"):
            out["float_value"] = stored
            out["value"] = f"{stored:.2f}".replace(".", ",")  # organisation locale, like the real API
        elif ftype == "date":
            out["date_value"] = stored
            out["value"] = datetime.fromisoformat(stored).strftime("%d/%m/%Y")
        elif ftype in ("datetime", "due_date"):
            out["datetime_value"] = stored
            out["value"] = datetime.fromisoformat(stored.replace("Z", "+00:00")).strftime("%d/%m/%Y %H:%M")
        else:
            out["value"] = stored
        return out

    # -- views -----------------------------------------------------------------------------------
    def phase_view(self, phase_id: str, depth: int = 0) -> dict[str, Any]:
        phase = self.phases[phase_id]
        count = len(self.cards_in_phase(phase_id))
        view = {"id": phase_id, "name": phase["name"], "done": phase["done"], "cards_count": count,
                "fields": phase["fields"], "_phase_id": phase_id}
        view["cards_can_be_moved_to_phases"] = (
            [self.phase_view(p, depth + 1) for p in phase["moves"]] if depth == 0 else []
        )
        return view

    def pipe_view(self, pipe_id: str) -> dict[str, Any]:
        pipe = self.pipes[pipe_id]
        start = self.phases[pipe["startFormPhaseId"]]
        return {
            "id": pipe_id, "uuid": pipe["uuid"], "name": pipe["name"], "startFormPhaseId": pipe["startFormPhaseId"],
            "phases": [self.phase_view(p) for p in pipe["phase_ids"]], "labels": pipe["labels"],
            "members": [{"user": u, "role_name": "admin"} for u in self.users],
            "start_form_fields": start["fields"],
            "cards_count": sum(1 for c in self.cards.values() if c["pipe_id"] == pipe_id),
        }

    def card_view(self, card: dict[str, Any]) -> dict[str, Any]:
        fields = self.pipe_fields(card["pipe_id"])
        phase = self.phases[card["phase_id"]]
        return {
            "id": card["id"], "uuid": str(uuid.UUID(int=int(card["id"]))), "title": card["title"],
            "url": f"https://app.pipefy.com/open-cards/{card['id']}",
            "current_phase": {"id": phase["id"], "name": phase["name"], "done": phase["done"]},
            "pipe": {"id": card["pipe_id"], "name": self.pipes[card["pipe_id"]]["name"]},
            "due_date": card["due_date"],
            "assignees": [u for u in self.users if u["id"] in card["assignee_ids"]],
            "labels": [lb for lb in self.pipes[card["pipe_id"]]["labels"] if lb["id"] in card["label_ids"]],
            "createdAt": _iso(card["createdAt"]), "updated_at": _iso(card["updated_at"]),
            "finished_at": _iso(card["finished_at"]), "done": phase["done"], "late": False, "expired": False,
            "phases_history": [
                {"phase": {"id": p, "name": self.phases[p]["name"]}, "firstTimeIn": _iso(t_in),
                 "lastTimeOut": _iso(t_out)} for p, t_in, t_out in card["history"]
            ],
            "fields": [self.read_value(fields[fid], value, ts) for fid, (value, ts) in card["values"].items()
                       if fid in fields and value is not None],
        }

    def record_view(self, record: dict[str, Any]) -> dict[str, Any]:
        fields = {f["id"]: f for f in self.tables[record["table_id"]]["table_fields"]}
        return {
            "id": record["id"], "title": record["title"], "created_at": _iso(record["created_at"]),
            "updated_at": _iso(record["updated_at"]),
            "record_fields": [
                {"field": fields[fid], "name": fields[fid]["label"],
                 "value": json.dumps(v) if isinstance(v, list) else str(v),
                 "array_value": v if isinstance(v, list) else None}
                for fid, v in record["values"].items() if fid in fields and v is not None
            ],
        }


def _matches(card: dict[str, Any], condition: dict[str, Any] | None) -> bool:
    if not condition:
        return True
    results = []
    if condition.get("field"):
        field, op, value = condition["field"], condition.get("operator") or "equal", condition.get("value")
        if field in ("updated_at", "createdAt", "created_at", "finished_at"):
            stored = card.get("createdAt" if field == "created_at" else field)
            if stored is None:
                results.append(False)
            else:
                try:
                    wanted = datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
                except ValueError:
                    raise PipefyFault(f"Invalid date in filter: {value!r}", "INVALID_INPUT") from None
                # compare at second precision, as the API formats timestamps
                results.append(_compare(int(stored), op, wanted))
        elif field == "title":
            results.append(_compare(card["title"], op, value))
        else:
            stored = card["values"].get(field, (None, 0))[0]
            results.append(_compare(stored, op, value))
    for sub in condition.get("AND") or []:
        results.append(_matches(card, sub))
    if condition.get("OR"):
        results.append(any(_matches(card, sub) for sub in condition["OR"]))
    return all(results)


def _compare(left: Any, op: str, right: Any) -> bool:
    if left is None:
        return False
    return {"equal": lambda: left == right, "gt": lambda: left > right, "gte": lambda: left >= right,
            "lt": lambda: left < right, "lte": lambda: left <= right}[op]()


class PipefyService:
    """The /pipefy routes over :class:`PipefyData`."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.data = PipefyData(state)
        self.windows: dict[str, SlidingWindow] = {}
        self.blocked_until: dict[str, float] = {}
        self.monthly: dict[tuple[str, str], int] = {}
        self.issued: dict[str, tuple[str, float]] = {}  # service-account access token -> (plan, expires)
        self.token_lifetime = 3600.0
        self._documents: dict[str, Any] = {}
        self.uploads: dict[str, bytes | None] = {}
        self.base_url = ""

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/graphql", self.graphql, methods=["POST"]),
            Route("/oauth/token", self.oauth_token, methods=["POST"]),
            Route("/_state", self.full_state, methods=["GET"]),
            Route("/_uploads/{key:path}", self.upload, methods=["PUT", "GET"]),
        ]

    async def upload(self, request: Request) -> Response:
        """The presigned URL: PUT stores the bytes (512 MB at most), GET returns them."""
        key = request.path_params["key"]
        if key not in self.uploads:
            return Response("NoSuchKey", status_code=404)
        if request.method == "PUT":
            body = await request.body()
            if len(body) > 512 * 1024 * 1024:
                return Response("EntityTooLarge", status_code=400)
            self.uploads[key] = body
            return Response(status_code=200)
        data = self.uploads[key]
        return Response(data or b"", status_code=200 if data is not None else 404)

    def snapshot(self) -> dict[str, Any]:
        d = self.data
        return {"pipes": d.pipes, "phases": d.phases, "cards": d.cards, "tables": d.tables, "records": d.records,
                "next_id": d.next_id}

    def restore(self, data: dict[str, Any]) -> None:
        for key in ("pipes", "phases", "cards", "tables", "records"):
            setattr(self.data, key, data[key])
        self.data.next_id = data["next_id"]

    # -- HTTP ------------------------------------------------------------------------------------
    async def oauth_token(self, request: Request) -> Response:
        form: dict[str, Any] = {}
        if request.headers.get("content-type", "").startswith("application/json"):
            form = await request.json()
        else:
            form = dict(await request.form())
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        if (client_id, client_secret) != DEFAULT_PIPEFY_CLIENT:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token = "sa-" + secrets.token_hex(16)
        with self.state.lock:
            self.issued[token] = ("unlimited", self.state.clock.now() + self.token_lifetime)
        return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": int(self.token_lifetime),
                             "created_at": int(self.state.clock.now())})

    async def full_state(self, request: Request) -> Response:
        with self.state.lock:
            d = self.data
            return JSONResponse({
                "pipes": [d.pipe_view(p) for p in d.pipes],
                "cards": [d.card_view(c) for c in d.cards.values()],
                "records": [d.record_view(r) for r in d.records.values()],
                "comments": d.comments,
            })

    def _plan(self, token: str) -> str | None:
        if token in self.state.config.pipefy_tokens:
            return self.state.config.pipefy_tokens[token]
        issued = self.issued.get(token)
        if issued and issued[1] > self.state.clock.now():
            return issued[0]
        return None

    async def graphql(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        with self.state.lock:
            plan = self._plan(token) if token else None
        if plan is None:
            return JSONResponse({"errors": [{"message": "Unauthorized", "extensions": {"code": "UNAUTHORIZED"}}]},
                                status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"errors": [{"message": "Invalid JSON body"}]}, status_code=400)
        cfg, now, key = self.state.config, self.state.clock.now(), token_key(token)
        self.base_url = str(request.base_url).rstrip("/")
        with self.state.lock:
            self.state.counters.count_request("pipefy", body.get("operationName") or "graphql", token)
            if self.blocked_until.get(key, 0) > now:
                self.state.counters.count_429("pipefy")
                return JSONResponse({"errors": [{"message": "Too many requests", "extensions": {
                    "code": "TOO_MANY_REQUESTS"}}]}, status_code=429)
            window = self.windows.setdefault(key, SlidingWindow(cfg.pipefy_requests_per_window,
                                                                cfg.pipefy_window_seconds))
            window.limit, window.window = cfg.pipefy_requests_per_window, cfg.pipefy_window_seconds
            seen = window.hit(now)
            self.state.counters.note_window(f"pipefy:{key}", seen)
            if seen > window.limit:
                self.blocked_until[key] = now + cfg.pipefy_block_seconds
                self.state.counters.count_429("pipefy")
                return JSONResponse({"errors": [{"message": "Too many requests", "extensions": {
                    "code": "TOO_MANY_REQUESTS"}}]}, status_code=429)
            quota = MONTHLY_QUOTA.get(plan)
            month = time.strftime("%Y-%m", time.gmtime(now))
            used = self.monthly.get((key, month), 0)
            if quota is not None and used >= quota:
                return JSONResponse({"data": None, "errors": [{"message": f"Monthly API usage limit of {quota} "
                                     f"calls reached for the {plan} plan", "extensions": {
                                         "code": "USAGE_LIMIT_EXCEEDED", "correlation_id": str(uuid.uuid4())}}]})
            self.monthly[(key, month)] = used + 1
            result = self._execute(body, token)
        return JSONResponse(result)

    def _execute(self, body: dict[str, Any], token: str) -> dict[str, Any]:
        query = body.get("query") or ""
        document = self._documents.get(query)
        if document is None:
            try:
                document = parse(query)
            except GraphQLError as err:
                return {"errors": [err.formatted]}
            errors = validate(SCHEMA, document)
            if errors:
                return {"errors": [e.formatted for e in errors]}
            if len(self._documents) < 500:
                self._documents[query] = document
        if "mutation" in query:
            self.data.version += 1
        # the document was parsed and validated once (cached): execute it directly
        result = execute_sync(SCHEMA, document, root_value=Root(self, token), variable_values=body.get("variables"),
                              operation_name=body.get("operationName"))
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        return out


class Root:
    """Resolvers for Query and Mutation fields (graphql-core calls root attributes)."""

    def __init__(self, service: PipefyService, token: str) -> None:
        self.s = service
        self.d = service.data
        self.token = token
        self.now = service.state.clock.now()

    # -- lookups ---------------------------------------------------------------------------------
    def _pipe(self, pipe_id: str) -> dict[str, Any]:
        pipe = self.d.pipes.get(str(pipe_id))
        if pipe is None:
            raise PipefyFault(f"Pipe not found with id: {pipe_id}", "RESOURCE_NOT_FOUND")
        if pipe.get("private") and self.token not in self.s.state.config.pipefy_tokens:
            raise PipefyFault("Permission denied", "PERMISSION_DENIED")
        return pipe

    def _card(self, card_id: str) -> dict[str, Any]:
        card = self.d.cards.get(str(card_id))
        if card is None:
            # the real API answers PERMISSION_DENIED for deleted or invisible cards
            raise PipefyFault("Permission denied", "PERMISSION_DENIED")
        self._pipe(card["pipe_id"])
        return card

    def _cards_of_pipe(self, pipe_id: str) -> list[dict[str, Any]]:
        self._pipe(pipe_id)
        return [c for c in self.d.cards.values() if c["pipe_id"] == str(pipe_id)]

    # -- queries ---------------------------------------------------------------------------------
    def me(self, info: Any) -> dict[str, Any]:
        return self.d.users[0]

    def pipe(self, info: Any, id: str) -> dict[str, Any]:
        self._pipe(id)
        view = self.d.pipe_view(str(id))
        for phase in view["phases"]:
            phase["cards"] = self._phase_cards_resolver(phase["id"])
        return view

    def _phase_cards_resolver(self, phase_id: str) -> Any:
        def resolve(info: Any, first: int | None = None, after: str | None = None) -> dict[str, Any]:
            cards = self.d.cards_in_phase(phase_id)
            return connection(cards, first, after, self.d.card_view)

        return resolve

    def phase(self, info: Any, id: str) -> dict[str, Any]:
        phase = self.d.phases.get(str(id))
        if phase is None:
            raise PipefyFault(f"Phase not found with id: {id}", "RESOURCE_NOT_FOUND")
        self._pipe(phase["pipe_id"])
        view = self.d.phase_view(str(id))
        view["cards"] = self._phase_cards_resolver(str(id))
        return view

    def card(self, info: Any, id: str) -> dict[str, Any]:
        return self.d.card_view(self._card(id))

    def allCards(self, info: Any, pipeId: str, first: int | None = None, after: str | None = None,
                 filter: dict[str, Any] | None = None) -> dict[str, Any]:
        cards = [c for c in self._cards_of_pipe(pipeId) if _matches(c, filter)]
        return connection(cards, first, after, self.d.card_view)

    def cards(self, info: Any, pipe_id: str, search: dict[str, Any] | None = None, first: int | None = None,
              after: str | None = None) -> dict[str, Any]:
        search = search or {}
        out = []
        for c in self._cards_of_pipe(pipe_id):
            if search.get("title") and search["title"].lower() not in c["title"].lower():
                continue
            if search.get("ignore_ids") and c["id"] in search["ignore_ids"]:
                continue
            if search.get("label_ids") and not set(search["label_ids"]) & set(c["label_ids"]):
                continue
            if search.get("assignee_ids") and not set(search["assignee_ids"]) & set(c["assignee_ids"]):
                continue
            if not search.get("include_done", True) and self.d.phases[c["phase_id"]]["done"]:
                continue
            out.append(c)
        return connection(out, first, after, self.d.card_view)

    def findCards(self, info: Any, pipeId: str, search: dict[str, Any], first: int | None = None,
                  after: str | None = None) -> dict[str, Any]:
        fields = self.d.pipe_fields(str(pipeId)) if str(pipeId) in self.d.pipes else {}
        field = fields.get(search["fieldId"])
        if field is None:
            self._pipe(pipeId)
            raise PipefyFault(f"Field not found with id: {search['fieldId']}", "RESOURCE_NOT_FOUND")
        if field["type"] == "connector":
            raise PipefyFault("Connector fields cannot be searched", "INVALID_INPUT")
        wanted = search["fieldValue"]
        out = []
        for c in self._cards_of_pipe(pipeId):
            stored = c["values"].get(field["id"], (None, 0))[0]
            if stored is None:
                continue
            display = json.dumps(stored) if isinstance(stored, list) else str(stored)
            if display == wanted or (isinstance(stored, float) and f"{stored:g}" == wanted):
                out.append(c)
        return connection(out, first, after, self.d.card_view)

    def table(self, info: Any, id: str) -> dict[str, Any]:
        table = self.d.tables.get(str(id))
        if table is None:
            raise PipefyFault(f"Table not found with id: {id}", "RESOURCE_NOT_FOUND")
        count = sum(1 for r in self.d.records.values() if r["table_id"] == str(id))
        return {**table, "table_records_count": count}

    def table_records(self, info: Any, table_id: str, first: int | None = None,
                      after: str | None = None) -> dict[str, Any]:
        self.table(info, table_id)
        records = [r for r in self.d.records.values() if r["table_id"] == str(table_id)]
        return connection(records, first, after, self.d.record_view)

    def findRecords(self, info: Any, tableId: str, search: dict[str, Any], first: int | None = None,
                    after: str | None = None) -> dict[str, Any]:
        table = self.table(info, tableId)
        if search["fieldId"] not in {f["id"] for f in table["table_fields"]}:
            raise PipefyFault(f"Field not found with id: {search['fieldId']}", "RESOURCE_NOT_FOUND")
        records = [r for r in self.d.records.values() if r["table_id"] == str(tableId)
                   and r["values"].get(search["fieldId"]) is not None
                   and str(r["values"][search["fieldId"]]) == search["fieldValue"]]
        return connection(records, first, after, self.d.record_view)

    def table_record(self, info: Any, id: str) -> dict[str, Any]:
        record = self.d.records.get(str(id))
        if record is None:
            raise PipefyFault(f"Record not found with id: {id}", "RECORD_NOT_FOUND")
        return self.d.record_view(record)

    # -- mutations -------------------------------------------------------------------------------
    def _set_values(self, card: dict[str, Any], fields: dict[str, dict[str, Any]], items: list[tuple[str, Any, str]]
                    ) -> None:
        for field_id, value, operation in items:
            field = fields.get(str(field_id))
            if field is None:
                raise PipefyFault(f"Field not found with id: {field_id}", "RESOURCE_NOT_FOUND")
            new = self.d.coerce(field, value)
            if operation in ("ADD", "REMOVE") and field["type"] in LIST_TYPES:
                current = list(card["values"].get(field["id"], ([], 0))[0] or [])
                new = (current + [v for v in new or [] if v not in current]) if operation == "ADD" else \
                    [v for v in current if v not in (new or [])]
            card["values"][field["id"]] = (new, self.now)

    def createCard(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        pipe = self._pipe(input["pipe_id"])
        phase_id = str(input.get("phase_id") or pipe["phase_ids"][0])
        if phase_id not in pipe["phase_ids"]:
            raise PipefyFault(f"Phase {phase_id} does not belong to pipe {pipe['id']}", "INVALID_INPUT")
        fields = self.d.pipe_fields(pipe["id"])
        card = {"id": self.d.new_id(), "title": input.get("title") or "", "pipe_id": pipe["id"],
                "phase_id": phase_id, "values": {}, "createdAt": self.now, "updated_at": self.now,
                "finished_at": None, "history": [(phase_id, self.now, None)],
                "assignee_ids": [str(a) for a in input.get("assignee_ids") or []],
                "label_ids": [str(lb) for lb in input.get("label_ids") or []], "due_date": input.get("due_date")}
        self._set_values(card, fields, [(a["field_id"], a.get("field_value"), "REPLACE")
                                        for a in input.get("fields_attributes") or []])
        start = self.d.phases[pipe["startFormPhaseId"]]
        for field in start["fields"]:
            if field.get("required") and card["values"].get(field["id"], (None, 0))[0] is None:
                raise PipefyFault(f'Field "{field["label"]}" is required! Please fill it and you\'ll be ready to go!',
                                  "RECORD_INVALID")
        if not card["title"]:
            first_value = next(iter(card["values"].values()), (None, 0))[0]
            card["title"] = str(first_value or f"Card {card['id']}")
        self.d.cards[card["id"]] = card
        return {"card": self.d.card_view(card)}

    def updateCard(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        card = self._card(input["id"])
        for key in ("title", "due_date"):
            if input.get(key) is not None:
                card[key] = input[key]
        for key in ("assignee_ids", "label_ids"):
            if input.get(key) is not None:
                card[key] = [str(v) for v in input[key]]
        card["updated_at"] = self.now
        return {"card": self.d.card_view(card)}

    def updateCardField(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        card = self._card(input["card_id"])
        self._set_values(card, self.d.pipe_fields(card["pipe_id"]), [(input["field_id"], input.get("new_value"),
                                                                       "REPLACE")])
        card["updated_at"] = self.now
        return {"success": True, "card": self.d.card_view(card)}

    def updateFieldsValues(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        values = input["values"]
        if len(values) > 30:
            raise PipefyFault(f"At most 30 values per call; got {len(values)}", "INVALID_INPUT")
        node_id = str(input["nodeId"])
        if node_id in self.d.records:
            record = self.d.records[node_id]
            fields = {f["id"]: f for f in self.d.tables[record["table_id"]]["table_fields"]}
            errors = []
            for item in values:
                field = fields.get(str(item["fieldId"]))
                if field is None:
                    errors.append({"field": item["fieldId"], "message": "Field not found"})
                    continue
                try:
                    record["values"][field["id"]] = self.d.coerce(field, item.get("value"))
                except PipefyFault as err:
                    errors.append({"field": item["fieldId"], "message": err.message})
            record["updated_at"] = self.now
            return {"success": not errors, "userErrors": errors, "updatedNode": None}
        card = self._card(node_id)
        fields = self.d.pipe_fields(card["pipe_id"])
        errors = []
        for item in values:
            try:
                self._set_values(card, fields, [(item["fieldId"], item.get("value"), item.get("operation") or
                                                 "REPLACE")])
            except PipefyFault as err:
                errors.append({"field": item["fieldId"], "message": err.message})
        if len(errors) < len(values):
            card["updated_at"] = self.now
        return {"success": not errors, "userErrors": errors, "updatedNode": self.d.card_view(card)}

    def moveCardToPhase(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        card = self._card(input["card_id"])
        target = str(input["destination_phase_id"])
        if target not in self.d.phases:
            raise PipefyFault(f"Phase not found with id: {target}", "RESOURCE_NOT_FOUND")
        current = self.d.phases[card["phase_id"]]
        if target not in current["moves"]:
            raise PipefyFault(
                f"Card can't be moved from {current['name']!r} to {self.d.phases[target]['name']!r}: this "
                "move is not allowed by the pipe's connections", "INVALID_INPUT")
        for field in current["fields"]:
            if field.get("required") and card["values"].get(field["id"], (None, 0))[0] is None:
                raise PipefyFault(f'Field "{field["label"]}" is required! Please fill it and you\'ll be ready to go!',
                                  "INVALID_INPUT")
        history = card["history"]
        history[-1] = (history[-1][0], history[-1][1], self.now)
        history.append((target, self.now, None))
        card["phase_id"] = target
        card["updated_at"] = self.now
        card["finished_at"] = self.now if self.d.phases[target]["done"] else None
        return {"card": self.d.card_view(card)}

    def deleteCard(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        card = self.d.cards.get(str(input["id"]))
        if card is None:
            raise PipefyFault(f"Card not found with id: {input['id']}", "RESOURCE_NOT_FOUND")
        del self.d.cards[card["id"]]
        return {"success": True}

    def createComment(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        card = self._card(input["card_id"])
        comment = {"id": self.d.new_id(), "text": input["text"], "card_id": card["id"]}
        self.d.comments.append(comment)
        return {"comment": comment}

    def createTableRecord(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        table = self.table(info, input["table_id"])
        fields = {f["id"]: f for f in table["table_fields"]}
        values: dict[str, Any] = {}
        for item in input.get("fields_attributes") or []:
            field = fields.get(str(item["field_id"]))
            if field is None:
                raise PipefyFault(f"Field not found with id: {item['field_id']}", "RESOURCE_NOT_FOUND")
            values[field["id"]] = self.d.coerce(field, item.get("field_value"))
        for field in table["table_fields"]:
            if field.get("required") and values.get(field["id"]) is None:
                raise PipefyFault(f'Field "{field["label"]}" is required!', "RECORD_INVALID")
        rid = self.d.new_id()
        record = {"id": rid, "table_id": table["id"], "title": input.get("title") or str(next(iter(values.values()))),
                  "created_at": self.now, "updated_at": self.now, "values": values}
        self.d.records[rid] = record
        return {"table_record": self.d.record_view(record)}

    def _record(self, record_id: str) -> dict[str, Any]:
        record = self.d.records.get(str(record_id))
        if record is None:
            raise PipefyFault(f"Record not found with id: {record_id}", "RECORD_NOT_FOUND")
        return record

    def updateTableRecord(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        record = self._record(input["id"])
        if input.get("title") is not None:
            record["title"] = input["title"]
        record["updated_at"] = self.now
        return {"table_record": self.d.record_view(record)}

    def setTableRecordFieldValue(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        record = self._record(input["table_record_id"])
        fields = {f["id"]: f for f in self.d.tables[record["table_id"]]["table_fields"]}
        field = fields.get(str(input["field_id"]))
        if field is None:
            raise PipefyFault(f"Field not found with id: {input['field_id']}", "RESOURCE_NOT_FOUND")
        record["values"][field["id"]] = self.d.coerce(field, input.get("value"))
        record["updated_at"] = self.now
        return {"table_record": self.d.record_view(record)}

    def createPresignedUrl(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        key = f"orgs/{input['organizationId']}/uploads/{uuid.uuid4()}/{input['fileName']}"
        self.s.uploads[key] = None
        base = self.s.base_url
        return {"url": f"{base}/pipefy/_uploads/{key}", "downloadUrl": f"{base}/pipefy/_uploads/{key}"}

    def deleteTableRecord(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        if str(input["id"]) not in self.d.records:
            raise PipefyFault(f"Record not found with id: {input['id']}", "RECORD_NOT_FOUND")
        del self.d.records[str(input["id"])]
        return {"success": True}
