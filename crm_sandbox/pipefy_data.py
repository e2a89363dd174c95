"""In-memory data of the emulated Pipefy API: seed, indexes, field-value formats.

Everything here is called with ``state.lock`` held by :mod:`crm_sandbox.pipefy`.

Cards are plain dicts (cheap to pickle for ``--snapshot``) indexed by phase and by pipe in sorted
lists of integer ids, so that a page of a 20,000-card phase costs a bisect, not a scan.
"""

from __future__ import annotations

import bisect
import json
import re
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

from graphql import GraphQLError

LIST_TYPES = frozenset({
    "checklist_vertical", "checklist_horizontal", "assignee_select", "label_select", "connector", "attachment",
})
CHOICE_TYPES = frozenset({"select", "radio_vertical", "radio_horizontal"})
NUMBER_TYPES = frozenset({"number", "currency"})
DATETIME_TYPES = frozenset({"datetime", "due_date"})
TEXT_TYPES = frozenset({"short_text", "long_text", "email", "phone", "cpf", "cnpj", "statement", "id"})
REQUIRED_MESSAGE = 'Field "{label}" is required! Please fill it and you\'ll be ready to go!'

USERS = [
    {"id": "901", "name": "Ada Admin", "email": "ada@sandbox.example"},
    {"id": "902", "name": "Bo Builder", "email": "bo@sandbox.example"},
    {"id": "903", "name": "Cy Consultant", "email": "cy@sandbox.example"},
    {"id": "904", "name": "Di Designer", "email": "di@sandbox.example"},
]
# the user behind service-account tokens (``me`` answers it); it is a member of pipes 301 and 302 only
SERVICE_ACCOUNT_USER = {"id": "990", "name": "Sandbox service account",
                        "email": "sandbox-pipefy-client@serviceaccount.pipefy.example"}


class PipefyFault(GraphQLError):
    """A GraphQL error in Pipefy's shape: ``extensions.code`` and ``extensions.correlation_id``.

    :param message: the human message.
    :param code: Pipefy's error code, e.g. ``RESOURCE_NOT_FOUND``.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, extensions={"code": code, "correlation_id": str(uuid.uuid4())})


def iso(ts: float | None) -> str | None:
    """A timestamp as Pipefy writes it (UTC, second precision, ``Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _field(fid: str, label: str, ftype: str, required: bool = False, options: list[str] | None = None,
           internal_id: int = 0) -> dict[str, Any]:
    return {"id": fid, "internal_id": str(internal_id), "label": label, "type": ftype, "required": required,
            "options": options or []}


def _decimal_display(number: float, decimals: int | None) -> str:
    """``1235.32`` -> ``1.235,32`` (the organisation locale of the sandbox is pt-BR, like Pipefy's default)."""
    text = f"{number:,.{decimals}f}" if decimals is not None else f"{number:,.10f}".rstrip("0").rstrip(".")
    return text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")


class PipefyData:
    """Pipes, phases, cards, tables and records, seeded deterministically from ``config.seed``.

    :param config: the sandbox configuration (seed and sizes).
    :param rnd: the seeded random generator.
    :param now: the sandbox clock's current time (seed timestamps lie before it).
    """

    def __init__(self, config: Any, rnd: Any, now: float) -> None:
        self.users = {u["id"]: u for u in USERS}
        self.pipes: dict[str, dict[str, Any]] = {}
        self.phases: dict[str, dict[str, Any]] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self.tables: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, dict[str, Any]] = {}
        self.next_id = 100_000
        self._seed(config, rnd, now)
        self.reindex()

    # -- ids and indexes ---------------------------------------------------------------------------
    def new_id(self) -> str:
        self.next_id += 1
        return str(self.next_id)

    def reindex(self) -> None:
        """Rebuild derived data (after seeding or a snapshot restore)."""
        self.version = 0  # bumped by every write; keys cached query results
        self._results: dict[Any, list[int]] = {}
        self.by_phase: dict[str, list[int]] = {p: [] for p in self.phases}
        self.by_pipe: dict[str, list[int]] = {p: [] for p in self.pipes}
        self.by_table: dict[str, list[int]] = {t: [] for t in self.tables}
        for card in self.cards.values():  # dicts keep insertion (= id) order
            self.by_phase[card["phase_id"]].append(int(card["id"]))
            self.by_pipe[card["pipe_id"]].append(int(card["id"]))
        for record in self.records.values():
            self.by_table[record["table_id"]].append(int(record["id"]))
        for ids in (*self.by_phase.values(), *self.by_pipe.values(), *self.by_table.values()):
            ids.sort()
        self.fields_by_pipe = {
            pid: {f["id"]: f for ph in [pipe["startFormPhaseId"], *pipe["phase_ids"]] for f in self.phases[ph]["fields"]}
            for pid, pipe in self.pipes.items()
        }
        self.fields_by_table = {tid: {f["id"]: f for f in t["table_fields"]} for tid, t in self.tables.items()}

    def touch(self) -> None:
        self.version += 1
        self._results.clear()

    def cached(self, key: Any, compute: Any) -> list[int]:
        """A filtered id list, reused until the next write (exports page through the same filter)."""
        hit = self._results.get(key)
        if hit is None:
            if len(self._results) > 64:
                self._results.clear()
            hit = self._results[key] = compute()
        return hit

    def add_card(self, card: dict[str, Any]) -> None:
        self.cards[card["id"]] = card
        bisect.insort(self.by_phase[card["phase_id"]], int(card["id"]))
        bisect.insort(self.by_pipe[card["pipe_id"]], int(card["id"]))
        self.touch()

    def remove_card(self, card: dict[str, Any]) -> None:
        del self.cards[card["id"]]
        for ids in (self.by_phase[card["phase_id"]], self.by_pipe[card["pipe_id"]]):
            ids.pop(bisect.bisect_left(ids, int(card["id"])))
        self.touch()

    def set_phase(self, card: dict[str, Any], phase_id: str) -> None:
        old = self.by_phase[card["phase_id"]]
        old.pop(bisect.bisect_left(old, int(card["id"])))
        bisect.insort(self.by_phase[phase_id], int(card["id"]))
        card["phase_id"] = phase_id
        self.touch()

    def add_record(self, record: dict[str, Any]) -> None:
        self.records[record["id"]] = record
        bisect.insort(self.by_table[record["table_id"]], int(record["id"]))
        self.touch()

    def remove_record(self, record: dict[str, Any]) -> None:
        del self.records[record["id"]]
        ids = self.by_table[record["table_id"]]
        ids.pop(bisect.bisect_left(ids, int(record["id"])))
        self.touch()

    # -- seed --------------------------------------------------------------------------------------
    def _seed(self, config: Any, rnd: Any, now: float) -> None:
        labels = [{"id": "501", "name": "Urgent", "color": "#FF0000"}, {"id": "502", "name": "VIP", "color": "#FFD700"},
                  {"id": "503", "name": "Renewal", "color": "#00AA00"}]
        onboarding_start = [
            _field("customer_name", "Customer name", "short_text", True, internal_id=1001),
            _field("email", "Email", "email", internal_id=1002),
            _field("phone", "Phone", "phone", internal_id=1003),
            _field("deal_value", "Deal value", "currency", internal_id=1004),
            _field("seats", "Seats", "number", internal_id=1005),
            _field("start_date", "Start date", "date", internal_id=1006),
            _field("kickoff_at", "Kickoff at", "datetime", internal_id=1007),
            _field("go_live", "Go-live deadline", "due_date", internal_id=1008),
            _field("call_time", "Preferred call time", "time", internal_id=1009),
            _field("plan", "Plan", "select", options=["Basic", "Pro", "Enterprise"], internal_id=1010),
            _field("segment", "Segment", "radio_vertical", options=["SMB", "Mid-market", "Enterprise"],
                   internal_id=1011),
            _field("billing", "Billing", "radio_horizontal", options=["Monthly", "Yearly"], internal_id=1012),
            _field("checklist", "Checklist", "checklist_vertical", options=["Contract", "Invoice", "Training"],
                   internal_id=1013),
            _field("channels", "Channels", "checklist_horizontal", options=["Email", "Phone", "Chat"],
                   internal_id=1014),
            _field("owner", "Owner", "assignee_select", internal_id=1015),
            _field("tags", "Tags", "label_select", internal_id=1016),
            _field("customer_record", "Customer record", "connector", internal_id=1017),
            _field("contract_file", "Contract file", "attachment", internal_id=1018),
            _field("tax_id", "Tax id (CPF)", "cpf", internal_id=1019),
            _field("company_tax_id", "Company tax id (CNPJ)", "cnpj", internal_id=1020),
            _field("notes", "Notes", "long_text", internal_id=1021),
            _field("pipedrive_deal_id", "Pipedrive deal id", "short_text", internal_id=1022),
        ]
        doing_fields = [_field("progress", "Progress", "radio_horizontal", options=["On track", "At risk"],
                               internal_id=1031)]
        review_fields = [_field("review_notes", "Review notes", "long_text", True, internal_id=1041)]
        cancel_fields = [_field("cancel_reason", "Cancellation reason", "select",
                                options=["Price", "Timing", "Competitor"], internal_id=1051)]
        self._add_pipe("301", "Customer onboarding", onboarding_start, labels, ["901", "902", "903", "904"], [
            ("3011", "Backlog", False, [], ["3012", "3015"]),
            ("3012", "Doing", False, doing_fields, ["3013", "3011", "3015"]),
            ("3013", "Review", False, review_fields, ["3014", "3012"]),
            ("3014", "Done", True, [], []),
            ("3015", "Cancelled", True, cancel_fields, ["3011"]),
        ])
        ticket_fields = [
            _field("requester", "Requester", "email", internal_id=2001),
            _field("priority", "Priority", "select", options=["Low", "Normal", "High"], internal_id=2002),
            _field("hours", "Hours", "number", internal_id=2003),
        ]
        names = ["New", "Triage", "In progress", "Waiting", "Resolved", "Closed"]
        self._add_pipe("302", "Support tickets", ticket_fields, labels[:2], ["901", "902"], [
            (str(3021 + i), name, name == "Closed", [], [str(3021 + j) for j in range(6) if j != i])
            for i, name in enumerate(names)
        ])
        # a pipe only personal tokens see: service accounts are not members (PERMISSION_DENIED)
        self._add_pipe("303", "Private finance", [_field("amount", "Amount", "currency", internal_id=3001)], [],
                       ["901"], [("3031", "Open", False, [], ["3032"]), ("3032", "Paid", True, [], [])])
        self.pipes["303"]["private"] = True

        self.tables["401"] = {"id": "401", "name": "Customers", "table_fields": [
            _field("company", "Company", "short_text", True, internal_id=4001),
            _field("contact_email", "Contact email", "email", internal_id=4002),
            _field("tier", "Tier", "select", options=["Gold", "Silver"], internal_id=4003),
            _field("employees", "Employees", "number", internal_id=4004),
            _field("since", "Customer since", "date", internal_id=4005),
        ]}
        self.tables["402"] = {"id": "402", "name": "Products", "table_fields": [
            _field("sku", "SKU", "short_text", True, internal_id=4101),
            _field("price", "Price", "currency", internal_id=4102),
            _field("features", "Features", "checklist_vertical", options=["API", "SSO", "Audit log"],
                   internal_id=4103),
        ]}
        # wider than one updateFieldsValues call (30 values): a 31+-field update takes two calls
        self.tables["403"] = {"id": "403", "name": "Onboarding checklist", "table_fields": [
            _field("item", "Item", "short_text", True, internal_id=4200),
            *(_field(f"step_{n:02d}", f"Step {n:02d}", "short_text", internal_id=4200 + n) for n in range(1, 35)),
        ]}
        for n in range(1, config.pipefy_table_records + 1):
            ts = now - rnd.uniform(86400, 90 * 86400)
            self._seed_record("401", f"Company {n}", ts, {
                "company": f"Company {n}", "contact_email": f"c{n}@example.com", "tier": ("Gold", "Silver")[n % 2],
                "employees": float(10 * (n % 50 + 1)), "since": (date(2020, 1, 1) + timedelta(days=n * 7)).isoformat(),
            })
        for n, (sku, price) in enumerate([("STARTER", 49.0), ("GROWTH", 199.0), ("SCALE", 1290.5)], start=1):
            self._seed_record("402", sku, now - 200 * 86400 + n, {"sku": sku, "price": price,
                                                                   "features": ["API", "SSO", "Audit log"][:n]})
        customer_ids = list(self.records)[: max(1, min(50, config.pipefy_table_records))]

        per_phase = config.pipefy_cards_per_phase
        n = 0
        for phase_id in self.pipes["301"]["phase_ids"]:
            for _ in range(per_phase):
                n += 1
                values: dict[str, Any] = {
                    "customer_name": f"Customer {n}", "email": f"customer{n}@example.com",
                    "deal_value": round(rnd.uniform(500, 50_000), 2), "seats": float(rnd.randint(1, 50)),
                    "start_date": (date(2026, 1, 1) + timedelta(days=n % 300)).isoformat(),
                    "plan": rnd.choice(("Basic", "Pro", "Enterprise")),
                    "checklist": rnd.sample(["Contract", "Invoice", "Training"], k=rnd.randint(0, 3)) or None,
                }
                if n % 3 == 0:
                    values["owner"] = [rnd.choice(("901", "902", "903", "904"))]
                    values["segment"] = rnd.choice(("SMB", "Mid-market", "Enterprise"))
                    values["customer_record"] = [customer_ids[n % len(customer_ids)]] if customer_ids else None
                if n % 4 == 0:
                    values["kickoff_at"] = iso(now + rnd.uniform(-30, 30) * 86400)
                    values["call_time"] = f"{9 + n % 8:02d}:{(n * 15) % 60:02d}"
                    values["tags"] = ["502"]
                if phase_id in ("3014",):
                    values["review_notes"] = "Approved"
                if phase_id == "3015":
                    values["cancel_reason"] = ("Price", "Timing", "Competitor")[n % 3]
                self._seed_card("301", phase_id, f"Onboarding #{n}", now - rnd.uniform(2, 60) * 86400, values,
                                rnd, labels=["501"] if n % 7 == 0 else [])
        priorities = ("Low", "Normal", "High")
        for phase_id in self.pipes["302"]["phase_ids"]:
            for _ in range(per_phase):
                n += 1
                self._seed_card("302", phase_id, f"Ticket #{n}", now - rnd.uniform(2, 60) * 86400, {
                    "requester": f"user{n}@example.com", "priority": priorities[n % 3], "hours": float(n % 17),
                }, rnd)
        for i in range(3):
            n += 1
            self._seed_card("303", "3031", f"Invoice #{i + 1}", now - (10 - i) * 86400, {"amount": 1000.0 * (i + 1)},
                            rnd)

    def _add_pipe(self, pipe_id: str, name: str, start_fields: list[dict[str, Any]], labels: list[dict[str, Any]],
                  members: list[str], phases: list[tuple[str, str, bool, list[dict[str, Any]], list[str]]]) -> None:
        start_id = f"{pipe_id}0"
        self.phases[start_id] = {"id": start_id, "name": "Start form", "pipe_id": pipe_id, "done": False,
                                 "fields": start_fields, "moves": [phases[0][0]], "start": True}
        for phase_id, phase_name, done, fields, moves in phases:
            self.phases[phase_id] = {"id": phase_id, "name": phase_name, "pipe_id": pipe_id, "done": done,
                                     "fields": fields, "moves": moves}
        self.pipes[pipe_id] = {"id": pipe_id, "uuid": str(uuid.UUID(int=int(pipe_id))), "name": name,
                               "startFormPhaseId": start_id, "phase_ids": [p[0] for p in phases], "labels": labels,
                               "members": [{"user_id": u, "role_name": "admin" if u == "901" else "member"}
                                           for u in members]}

    def _seed_card(self, pipe_id: str, phase_id: str, title: str, created: float, values: dict[str, Any],
                   rnd: Any, labels: list[str] | None = None) -> None:
        cid = self.new_id()
        updated = created + rnd.uniform(0, 86400)
        done = self.phases[phase_id]["done"]
        history: list[list[Any]] = [[phase_id, created, None]]
        self.cards[cid] = {
            "id": cid, "title": title, "pipe_id": pipe_id, "phase_id": phase_id,
            "values": {k: v for k, v in values.items() if v is not None}, "filled": {},
            "createdAt": created, "updated_at": updated, "finished_at": updated if done else None,
            "history": history, "assignee_ids": [], "label_ids": labels or [], "due_date": None,
        }

    def _seed_record(self, table_id: str, title: str, ts: float, values: dict[str, Any]) -> None:
        rid = self.new_id()
        self.records[rid] = {"id": rid, "table_id": table_id, "title": title, "created_at": ts, "updated_at": ts,
                             "values": values, "filled": {}, "due_date": None, "status_id": None}

    # -- field values --------------------------------------------------------------------------------
    def coerce(self, field: dict[str, Any], value: Any, pipe_id: str | None = None) -> Any:
        """A written value in its stored form; INVALID_INPUT naming field and value when it does not fit.

        ``None``, ``""`` and ``[]`` clear the field.
        """
        ftype = field["type"]

        def bad(why: str = "") -> PipefyFault:
            shown = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else f'"{value}"'
            return PipefyFault(f'Field "{field["label"]}" ({ftype}): invalid value {shown}{why}', "INVALID_INPUT")

        if value is None or value == "" or value == []:
            return None
        if ftype in LIST_TYPES:
            items = value
            if isinstance(items, str):
                text = items.strip()
                if text.startswith("["):
                    try:
                        items = json.loads(text)
                    except ValueError:
                        raise bad() from None
                else:
                    items = [text]
            if not isinstance(items, list) or any(isinstance(i, (list, dict, bool)) or i is None for i in items):
                raise bad()
            out = [str(i) for i in items]
            if ftype.startswith("checklist") and any(i not in field["options"] for i in out):
                raise bad(f"; options are {field['options']}")
            if ftype == "assignee_select" and any(i not in self.users for i in out):
                raise bad(": unknown user id")
            if ftype == "label_select":
                known = {lb["id"] for lb in self.pipes[pipe_id]["labels"]} if pipe_id else set()
                if any(i not in known for i in out):
                    raise bad(": unknown label id")
            if ftype == "connector" and any(i not in self.cards and i not in self.records for i in out):
                raise bad(": unknown card or record id")
            return list(dict.fromkeys(out))
        if isinstance(value, (list, dict, bool)):
            raise bad()
        text = str(value).strip()
        if ftype in NUMBER_TYPES:
            if re.fullmatch(r"-?\d+,\d+", text):  # a locale decimal comma, "350,21"
                text = text.replace(",", ".")
            try:
                number = float(text)
            except ValueError:
                raise bad() from None
            if number != number or number in (float("inf"), float("-inf")):
                raise bad()
            return number
        if ftype == "date":
            for fmt, size in (("%Y-%m-%d", 10), ("%d/%m/%Y", 10)):
                try:
                    return datetime.strptime(text[:size], fmt).date().isoformat()
                except ValueError:
                    continue
            raise bad()
        if ftype in DATETIME_TYPES:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                try:
                    moment = datetime.strptime(text, "%d/%m/%Y %H:%M")
                except ValueError:
                    raise bad() from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            return iso(moment.timestamp())
        if ftype == "time":
            if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", text):
                raise bad()
            return text
        if ftype in CHOICE_TYPES and field["options"] and text not in field["options"]:
            raise bad(f"; options are {field['options']}")
        if ftype == "email" and not re.fullmatch(r"[^@\s]+@[^@\s]+", text):
            raise bad()
        if ftype == "cpf" and len(re.sub(r"\D", "", text)) != 11:
            raise bad()
        if ftype == "cnpj" and len(re.sub(r"\D", "", text)) != 14:
            raise bad()
        return text

    def display_names(self, ftype: str, items: list[str]) -> list[str]:
        if ftype == "assignee_select":
            return [self.users[i]["name"] if i in self.users else i for i in items]
        if ftype == "label_select":
            names = {lb["id"]: lb["name"] for p in self.pipes.values() for lb in p["labels"]}
            return [names.get(i, i) for i in items]
        if ftype == "connector":
            return [(self.cards.get(i) or self.records.get(i) or {"title": i})["title"] for i in items]
        return items

    def read_value(self, field: dict[str, Any], stored: Any, filled_at: float | None) -> dict[str, Any]:
        """A stored value the way Pipefy reads it: display ``value`` plus machine-readable twins."""
        ftype = field["type"]
        out: dict[str, Any] = {"field": field, "name": field["label"], "value": None, "array_value": None,
                               "date_value": None, "datetime_value": None, "float_value": None,
                               "filled_at": iso(filled_at), "updated_at": iso(filled_at)}
        if ftype in LIST_TYPES:
            out["array_value"] = stored
            out["value"] = json.dumps(self.display_names(ftype, stored), ensure_ascii=False)
        elif ftype in NUMBER_TYPES:
            out["float_value"] = stored
            out["value"] = _decimal_display(stored, 2 if ftype == "currency" else None)
        elif ftype == "date":
            out["date_value"] = stored
            out["datetime_value"] = f"{stored}T00:00:00Z"
            out["value"] = datetime.fromisoformat(stored).strftime("%d/%m/%Y")
        elif ftype in DATETIME_TYPES:
            out["datetime_value"] = stored
            out["date_value"] = stored[:10]
            out["value"] = datetime.strptime(stored, "%Y-%m-%dT%H:%M:%SZ").strftime("%d/%m/%Y %H:%M")
        else:
            out["value"] = stored
        return out

    def matches_exact(self, field: dict[str, Any], stored: Any, wanted: str) -> bool:
        """findCards / findRecords: exact, case-sensitive; display or machine form."""
        if stored is None:
            return False
        read = self.read_value(field, stored, None)
        if wanted == read["value"]:
            return True
        if isinstance(stored, float):
            try:
                return float(wanted) == stored
            except ValueError:
                return False
        if isinstance(stored, list):
            return wanted == json.dumps(stored) or stored == [wanted]
        return wanted == stored

    def card_fields(self, card: dict[str, Any]) -> list[dict[str, Any]]:
        fields = self.fields_by_pipe[card["pipe_id"]]
        filled, default = card["filled"], card["createdAt"]
        return [self.read_value(fields[fid], value, filled.get(fid, default))
                for fid, value in card["values"].items() if fid in fields and value is not None]

    def record_fields(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        fields = self.fields_by_table[record["table_id"]]
        filled, default = record["filled"], record["created_at"]
        return [self.read_value(fields[fid], value, filled.get(fid, default))
                for fid, value in record["values"].items() if fid in fields and value is not None]

    # -- plain JSON views (``GET /pipefy/_state``) -----------------------------------------------------
    def card_json(self, card: dict[str, Any]) -> dict[str, Any]:
        phase = self.phases[card["phase_id"]]
        return {
            "id": card["id"], "title": card["title"], "url": f"https://app.pipefy.com/open-cards/{card['id']}",
            "pipe": {"id": card["pipe_id"], "name": self.pipes[card["pipe_id"]]["name"]},
            "current_phase": {"id": phase["id"], "name": phase["name"], "done": phase["done"]},
            "done": phase["done"], "due_date": card["due_date"], "createdAt": iso(card["createdAt"]),
            "updated_at": iso(card["updated_at"]), "finished_at": iso(card["finished_at"]),
            "assignee_ids": card["assignee_ids"], "label_ids": card["label_ids"],
            "phases_history": [{"phase": {"id": p, "name": self.phases[p]["name"]}, "firstTimeIn": iso(t_in),
                                "lastTimeOut": iso(t_out)} for p, t_in, t_out in card["history"]],
            "fields": [{**item, "field": {k: item["field"][k] for k in ("id", "label", "type", "internal_id")}}
                       for item in self.card_fields(card)],
        }

    def record_json(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": record["id"], "table_id": record["table_id"], "title": record["title"],
            "created_at": iso(record["created_at"]), "updated_at": iso(record["updated_at"]),
            "due_date": record["due_date"],
            "record_fields": [{**item, "field": {k: item["field"][k] for k in ("id", "label", "type")}}
                              for item in self.record_fields(record)],
        }

    def state_json(self) -> dict[str, Any]:
        return {
            "users": list(self.users.values()),
            "pipes": [{**{k: v for k, v in p.items() if k != "phase_ids"}, "phase_ids": p["phase_ids"],
                       "cards_count": len(self.by_pipe[p["id"]])} for p in self.pipes.values()],
            "phases": [{**ph, "cards_count": len(self.by_phase[ph["id"]])} for ph in self.phases.values()],
            "cards": [self.card_json(c) for c in self.cards.values()],
            "tables": list(self.tables.values()),
            "records": [self.record_json(r) for r in self.records.values()],
            "comments": list(self.comments.values()),
        }
