"""Data of the emulated Pipedrive account: field definitions, seeded records, compact tables.

Seeded records are not stored one dict each: a table keeps its times, status and flags in flat
arrays and builds a seeded record from ``(seed, id)`` on demand. Only records that were created or
changed through the API are stored as dicts. 200,000 deals cost a few megabytes and seed in about
a second.

Times are whole seconds of the sandbox clock (``state.clock.now()``); the API layer formats them
(RFC 3339 for v2, ``YYYY-MM-DD HH:MM:SS`` for v1).
"""

from __future__ import annotations

import hashlib
import uuid
from array import array
from collections.abc import Iterator
from typing import Any

from crm_sandbox.core import SandboxState, utc_day, utc_text

DAY = 86_400
# flags
DELETED = 1
ARCHIVED = 2
GONE = 4  # hard-deleted (v1 notes and leads): the id no longer exists
STATUSES = ("open", "won", "lost", "deleted")

FIRST_NAMES = ("Ana", "Li", "Omar", "Grace", "Mateo", "Aisha", "Kenji", "Sofia", "Noah", "Priya", "Lucas", "Emma",
               "Tariq", "Chloe", "Ivan", "Mei", "Diego", "Fatima", "Jonas", "Zoe")
LAST_NAMES = ("Silva", "Wei", "Haddad", "Okafor", "Garcia", "Khan", "Tanaka", "Rossi", "Müller", "Patel", "Martin",
              "Novak", "Jensen", "Dubois", "Kowalski", "Nguyen", "Costa", "Schmidt", "Ahmed", "Larsen")
COMPANY_WORDS = ("Acme", "Northwind", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay",
                 "Soylent", "Tyrell", "Cyberdyne", "Wonka", "Oscorp", "Gringotts", "Aperture")
COMPANY_KINDS = ("Logistics", "Analytics", "Foods", "Health", "Energy", "Media", "Robotics", "Travel", "Finance",
                 "Retail")
DEAL_KINDS = ("renewal", "expansion", "pilot", "new licence", "upgrade", "services", "onboarding package")
CITIES = (("Lisbon", "PT"), ("Berlin", "DE"), ("Austin", "US"), ("Osaka", "JP"), ("São Paulo", "BR"),
          ("Nairobi", "KE"), ("Toronto", "CA"), ("Sydney", "AU"))
CURRENCIES = ("USD", "USD", "USD", "EUR", "GBP")
USERS: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "Sandbox Admin", "email": "admin@sandbox.example"},
    {"id": 2, "name": "Rita Sales", "email": "rita@sandbox.example"},
    {"id": 3, "name": "Tom Accounts", "email": "tom@sandbox.example"},
)
PIPELINES = (("Sales", ("Qualified", "Contact made", "Proposal made", "Negotiations started", "Contract sent")),
             ("Partnerships", ("Intro", "Evaluation", "Agreement", "Launch")))


def mix(seed: int, salt: str, n: int) -> int:
    """A 64-bit pseudo-random number from ``(seed, salt, n)``: seeded records need no stored state."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{n}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hash_key(seed: int, name: str) -> str:
    """A 40-character hex key like Pipedrive's custom-field keys (deterministic per seed)."""
    return hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()


def lead_uuid(seed: int, n: int) -> str:
    return str(uuid.UUID(int=mix(seed, "lead-a", n) << 64 | mix(seed, "lead-b", n), version=4))


def day_text(ts: float) -> str:
    return utc_day(int(ts) // DAY)


# -- field definitions ------------------------------------------------------------------------------
# (name, key or None for a custom field, field type, option labels)
STANDARD_FIELDS: dict[str, list[tuple[str, str, str]]] = {
    "deals": [("ID", "id", "int"), ("Title", "title", "varchar"), ("Value", "value", "monetary"),
              ("Currency", "currency", "varchar"), ("Status", "status", "status"), ("Stage", "stage_id", "stage"),
              ("Pipeline", "pipeline_id", "double"), ("Owner", "owner_id", "user"), ("Contact person", "person_id",
                                                                                      "people"),
              ("Organization", "org_id", "org"), ("Expected close date", "expected_close_date", "date"),
              ("Probability", "probability", "double"), ("Won time", "won_time", "date"),
              ("Lost time", "lost_time", "date"), ("Lost reason", "lost_reason", "varchar"),
              ("Deal created", "add_time", "date"), ("Update time", "update_time", "date")],
    "persons": [("ID", "id", "int"), ("Name", "name", "varchar"), ("First name", "first_name", "varchar"),
                ("Last name", "last_name", "varchar"), ("Email", "emails", "varchar"), ("Phone", "phones", "phone"),
                ("Owner", "owner_id", "user"), ("Organization", "org_id", "org"), ("Job title", "job_title", "varchar"),
                ("Person created", "add_time", "date"), ("Update time", "update_time", "date")],
    "organizations": [("ID", "id", "int"), ("Name", "name", "varchar"), ("Owner", "owner_id", "user"),
                      ("Address", "address", "address"), ("Website", "website", "varchar"),
                      ("Organization created", "add_time", "date"), ("Update time", "update_time", "date")],
    "products": [("ID", "id", "int"), ("Name", "name", "varchar"), ("Product code", "code", "varchar"),
                 ("Unit", "unit", "varchar"), ("Tax", "tax", "double"), ("Prices", "prices", "price_list")],
    "activities": [("ID", "id", "int"), ("Subject", "subject", "varchar"), ("Type", "type", "activity"),
                   ("Due date", "due_date", "date"), ("Done", "done", "boolean"), ("Deal", "deal_id", "deal"),
                   ("Contact person", "person_id", "people"), ("Organization", "org_id", "org")],
}
CUSTOM_FIELDS: dict[str, list[tuple[str, str, list[str] | None]]] = {
    "deals": [("Onboarding plan", "enum", ["Basic", "Pro", "Enterprise"]), ("Contract value", "monetary", None),
              ("Go-live date", "date", None), ("Region", "set", ["EMEA", "AMER", "APAC"]),
              ("External id", "varchar", None), ("Seats", "double", None), ("Account notes", "text", None),
              ("Hotline", "phone", None), ("Billing address", "address", None)],
    "persons": [("Source", "enum", ["Web", "Event", "Referral"]), ("Customer id", "varchar", None),
                ("Lifetime value", "double", None), ("Interests", "set", ["Analytics", "Automation", "Support"]),
                ("Birthday", "date", None)],
    "organizations": [("Industry", "enum", ["SaaS", "Retail", "Finance"]), ("Address", "address", None),
                      ("Annual revenue", "monetary", None), ("Account code", "varchar", None)],
    "products": [("SKU", "varchar", None), ("Weight kg", "double", None)],
    "activities": [("Outcome", "text", None)],
}
SEARCHABLE_TYPES = {"address", "varchar", "text", "varchar_auto", "double", "monetary", "phone"}


def field_definitions(seed: int) -> dict[str, list[dict[str, Any]]]:
    """Per entity: standard and custom field definitions (internal shape; the API formats v1/v2)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for entity, standard in STANDARD_FIELDS.items():
        defs: list[dict[str, Any]] = [{"key": key, "name": name, "field_type": ftype, "is_custom_field": False, "options": None}
                for name, key, ftype in standard]
        for name, ftype, labels in CUSTOM_FIELDS[entity]:
            options = None
            if labels:
                base = int(hash_key(seed, f"{entity}:{name}")[:3], 16) % 50 * 10  # ids differ per account
                options = [{"id": base + i + 1, "label": label} for i, label in enumerate(labels)]
            defs.append({"key": hash_key(seed, f"{entity}:{name}"), "name": name, "field_type": ftype,
                         "is_custom_field": True, "options": options})
        for order, d in enumerate(defs, start=1):
            d["id"] = order + (100 if d["is_custom_field"] else 0) * len(out)
            d["order_nr"] = order
        out[entity] = defs
    return out


class Table:
    """Records of one entity with integer ids ``1..next_id-1``.

    ``add_time``, ``update_time``, ``status`` and ``flags`` are authoritative columns; ``rows`` holds
    the other attributes of records that were created or changed (a seeded, unchanged record is
    built on demand by :meth:`PipedriveData.row`).

    :param entity: entity name (``deals``, ``leads``, ...).
    :param seeded: how many records the seed made (ids 1..seeded).
    """

    def __init__(self, entity: str, seeded: int) -> None:
        self.entity = entity
        self.seeded = seeded
        self.next_id = 1
        self.add_time = array("q", [0])  # index 0 unused: index == id
        self.update_time = array("q", [0])
        self.status = bytearray(1)
        self.flags = bytearray(1)
        self.rows: dict[int, dict[str, Any]] = {}
        self.uuid_of: dict[int, str] = {}  # leads: internal id -> UUID
        self.id_of: dict[str, int] = {}
        self.exact_index: dict[tuple[str, str], set[int]] | None = None  # search, built on first use

    def append(self, added: int, updated: int, status: int = 0, flags: int = 0) -> int:
        rid = self.next_id
        self.next_id += 1
        self.add_time.append(added)
        self.update_time.append(updated)
        self.status.append(status)
        self.flags.append(flags)
        return rid

    def exists(self, rid: int) -> bool:
        return 0 < rid < self.next_id and not self.flags[rid] & GONE

    def ids(self) -> Iterator[int]:
        flags = self.flags
        return (i for i in range(1, self.next_id) if not flags[i] & GONE)

    def __len__(self) -> int:
        return sum(1 for _ in self.ids())


class PipedriveData:
    """Everything the emulated account holds; seeded from ``state.config`` deterministically.

    :param state: the sandbox state (config, clock, random).
    """

    def __init__(self, state: SandboxState) -> None:
        cfg = state.config
        self.seed = cfg.seed
        self.now = int(state.clock.now())  # seed reference time
        self.fields = field_definitions(cfg.seed)
        self.custom = {e: {d["key"]: d for d in defs if d["is_custom_field"]} for e, defs in self.fields.items()}
        self.custom["leads"] = self.custom["deals"]  # leads share the deal fields, as in Pipedrive
        self.version = 0  # bumped by every write (list caches key on it)
        sizes = {
            "pipelines": len(PIPELINES), "stages": sum(len(s) for _, s in PIPELINES),
            "organizations": cfg.pipedrive_organizations, "persons": cfg.pipedrive_persons,
            "deals": cfg.pipedrive_deals, "activities": max(20, cfg.pipedrive_deals // 4),
            "products": 30, "leads": max(20, min(2_000, cfg.pipedrive_deals // 10)),
            "notes": max(30, min(5_000, cfg.pipedrive_deals // 5)),
        }
        self.tables = {name: Table(name, n) for name, n in sizes.items()}
        self.stage_pipeline: list[int] = [0]
        self._seed_tables(state)
        self.threads: list[dict[str, Any]] = []
        self.messages: dict[int, list[dict[str, Any]]] = {}
        self._seed_mail(cfg.pipedrive_mail_threads)

    # -- seeding ------------------------------------------------------------------------------------
    def _seed_tables(self, state: SandboxState) -> None:
        rnd, now = state.random, self.now
        for pipeline_nr, (_, stages) in enumerate(PIPELINES, start=1):
            self.tables["pipelines"].append(now - 700 * DAY, now - 600 * DAY)
            for _ in stages:
                self.tables["stages"].append(now - 700 * DAY, now - 600 * DAY)
                self.stage_pipeline.append(pipeline_nr)
        for name in ("organizations", "persons", "deals", "activities", "products", "leads", "notes"):
            table = self.tables[name]
            for n in range(1, table.seeded + 1):
                added = now - int(rnd.uniform(2 * DAY, 360 * DAY))
                updated = added + int(rnd.random() ** 3 * (now - added))
                status = flags = 0
                if name == "deals":
                    h = mix(self.seed, "deal-state", n)
                    status = (0, 0, 0, 0, 0, 1, 1, 2, 2, 0)[h % 10] if n > 1 else 0
                    if n > 10 and h % 97 == 3:  # about 1 %: deleted lately (Pipedrive purges them after 30 days)
                        status, flags = 3, DELETED
                        updated = now - int(rnd.uniform(DAY, 25 * DAY))
                        added = min(added, updated)
                    elif n > 10 and h % 31 == 5:  # about 3 %: archived
                        flags = ARCHIVED
                elif name == "leads":
                    table.uuid_of[n] = lead_uuid(self.seed, n)
                    table.id_of[table.uuid_of[n]] = n
                    flags = ARCHIVED if n % 10 == 0 else 0
                table.append(added, updated, status, flags)

    def _seed_mail(self, count: int) -> None:
        folders = ("inbox", "inbox", "sent", "archive", "drafts")
        persons = max(1, self.tables["persons"].seeded)
        for n in range(1, count + 1):
            h = mix(self.seed, "thread", n)
            folder = folders[h % len(folders)]
            person = 1 + h % persons
            first = self.now - (n * 7 + h % 5) * 3600
            messages: list[dict[str, Any]] = []
            for i in range(1 + h % 3 + (1 if folder != "drafts" else 0)):
                sent = folder in ("sent",) or i % 2 == 1
                when = first + i * 1800
                messages.append({
                    "id": n * 10 + i, "account_id": "sandbox-mail-account", "user_id": 1, "mail_thread_id": n,
                    "subject": f"Re: proposal {n}" if i else f"Proposal {n}",
                    "snippet": f"Message {i + 1} of thread {n}", "read_flag": 1, "mail_tracking_status": None,
                    "has_attachments_flag": 0, "has_inline_attachments_flag": 0, "has_real_attachments_flag": 0,
                    "deleted_flag": 0, "synced_flag": 1, "smart_bcc_flag": 0, "mail_link_tracking_enabled_flag": 0,
                    "from": [self._party(1 if sent else person, sent, when)],
                    "to": [self._party(person if sent else 1, not sent, when)], "cc": [], "bcc": [],
                    "body_url": f"https://sandbox.example/mail/{n * 10 + i}", "draft": None, "has_body_flag": 1,
                    "sent_flag": int(sent), "sent_from_pipedrive_flag": int(sent), "message_time": when,
                    "add_time": when, "update_time": when,
                })
            self.messages[n] = messages
            self.threads.append({
                "id": n, "account_id": "sandbox-mail-account", "user_id": 1, "subject": messages[0]["subject"],
                "snippet": messages[-1]["snippet"], "read_flag": 1, "mail_tracking_status": None,
                "has_attachments_flag": 0, "has_inline_attachments_flag": 0, "has_real_attachments_flag": 0,
                "deleted_flag": 0, "synced_flag": 1, "smart_bcc_flag": 0, "mail_link_tracking_enabled_flag": 0,
                "parties": {"to": [messages[0]["to"][0]], "from": [messages[0]["from"][0]]}, "drafts_parties": [],
                "folders": [folder], "version": 1, "snippet_draft": None, "snippet_sent": messages[-1]["snippet"],
                "message_count": len(messages), "has_draft_flag": int(folder == "drafts"),
                "has_sent_flag": int(any(m["sent_flag"] for m in messages)), "archived_flag": int(folder == "archive"),
                "shared_flag": 0, "external_deleted_flag": 0, "first_message_to_me_flag": int(folder != "sent"),
                "last_message_timestamp": messages[-1]["message_time"], "first_message_timestamp": first,
                "last_message_sent_timestamp": None, "last_message_received_timestamp": messages[-1]["message_time"],
                "add_time": first, "update_time": messages[-1]["message_time"], "deal_id": 1 + h % max(1, min(50, self.tables["deals"].seeded)),
                "deal_status": "open", "lead_id": None, "all_messages_sent_flag": 0, "folder": folder,
            })

    def _party(self, who: int, is_user: bool, when: int) -> dict[str, Any]:
        if is_user:
            user = USERS[0]
            name, email, person_id = user["name"], user["email"], 0
        else:
            name, email, person_id = self._person_name(who), f"person{who}@example.com", who
        return {"id": who, "name": name, "latest_sent": False, "email_address": email, "message_time": when,
                "linked_person_id": person_id, "linked_person_name": name if person_id else "",
                "mail_message_party_id": who, "linked_organization_id": None}

    # -- seeded rows (built on demand) ---------------------------------------------------------------
    def definition(self, entity: str, name: str) -> dict[str, Any]:
        """A field's definition by its name (the first of that name, as Pipedrive's UI shows it)."""
        by_name = self.__dict__.get("_by_name")
        if by_name is None:  # built once; seeded rows look fields up by name for every record
            by_name = self.__dict__["_by_name"] = {}
            for ent, defs in self.fields.items():
                for d in defs:
                    by_name.setdefault((ent, d["name"]), d)
        return by_name[(entity, name)]

    def key(self, entity: str, name: str) -> str:
        return str(self.definition(entity, name)["key"])

    def option(self, entity: str, name: str, index: int) -> int:
        options = self.definition(entity, name)["options"]
        return int(options[index % len(options)]["id"])

    def _person_name(self, n: int) -> str:
        h = mix(self.seed, "person", n)
        return f"{FIRST_NAMES[h % 20]} {LAST_NAMES[(h >> 8) % 20]}"

    def _org_name(self, n: int) -> str:
        h = mix(self.seed, "org", n)
        return f"{COMPANY_WORDS[h % 16]} {COMPANY_KINDS[(h >> 8) % 10]} {n}"

    def _address(self, n: int, salt: str) -> dict[str, Any]:
        h = mix(self.seed, salt, n)
        city, country = CITIES[h % len(CITIES)]
        street = f"{1 + h % 200} Market Street"
        return {"value": f"{street}, {city}, {country}", "country": country, "locality": city,
                "route": "Market Street", "street_number": str(1 + h % 200), "postal_code": f"{h % 90000 + 10000}"}

    def row(self, entity: str, rid: int) -> dict[str, Any]:
        """The attributes of a record besides id, times, status and flags (a copy for seeded rows)."""
        stored = self.tables[entity].rows.get(rid)
        if stored is not None:
            return stored
        return getattr(self, f"_seed_{entity}")(rid)

    def _seed_pipelines(self, n: int) -> dict[str, Any]:
        return {"name": PIPELINES[n - 1][0], "order_nr": n, "is_deal_probability_enabled": True}

    def _seed_stages(self, n: int) -> dict[str, Any]:
        pipeline = self.stage_pipeline[n]
        first = 1 + sum(len(s) for _, s in PIPELINES[: pipeline - 1])
        names = PIPELINES[pipeline - 1][1]
        order = n - first + 1
        return {"name": names[order - 1], "order_nr": order, "pipeline_id": pipeline,
                "deal_probability": min(100, 20 * order), "is_deal_rot_enabled": False, "days_to_rotten": None}

    def _seed_organizations(self, n: int) -> dict[str, Any]:
        h = mix(self.seed, "org-attrs", n)
        return {
            "name": self._org_name(n), "owner_id": 1 + h % 3, "visible_to": 3, "label_ids": [],
            "address": self._address(n, "org-address"), "website": f"https://org{n}.example.com",
            "custom_fields": {
                self.key("organizations", "Industry"): self.option("organizations", "Industry", h),
                self.key("organizations", "Address"): self._address(n, "org-address")["value"],
                self.key("organizations", "Annual revenue"): {"value": float(100_000 + h % 9_900_000),
                                                              "currency": "USD"},
                self.key("organizations", "Account code"): f"ACC-{n:05d}",
            },
        }

    def _seed_persons(self, n: int) -> dict[str, Any]:
        h = mix(self.seed, "person", n)
        first, last = FIRST_NAMES[h % 20], LAST_NAMES[(h >> 8) % 20]
        orgs = self.tables["organizations"].seeded
        emails = [{"value": f"person{n}@example.com", "primary": True, "label": "work"}]
        if h % 3 == 0:
            emails.append({"value": f"{first}.{last}{n}@mail.example".lower(), "primary": False, "label": "home"})
        return {
            "name": f"{first} {last}", "first_name": first, "last_name": last, "owner_id": 1 + (h >> 16) % 3,
            "org_id": 1 + n % orgs if orgs else None, "emails": emails,
            "phones": [{"value": f"+1555{n:07d}", "primary": True, "label": "work"}], "visible_to": 3,
            "label_ids": [], "job_title": ("Buyer", "CTO", "Operations lead", "Founder")[(h >> 24) % 4],
            "custom_fields": {
                self.key("persons", "Source"): self.option("persons", "Source", n),
                self.key("persons", "Customer id"): f"C-{n:06d}",
                self.key("persons", "Lifetime value"): round((h % 100_000) / 10, 1),
                self.key("persons", "Interests"): [self.option("persons", "Interests", h >> 4)],
                self.key("persons", "Birthday"): f"19{60 + h % 40}-{1 + h % 12:02d}-{1 + h % 28:02d}",
            },
        }

    def deal_links(self, n: int) -> dict[str, Any]:
        """The filterable links of a seeded deal, without building the whole record."""
        h = mix(self.seed, "deal", n)
        persons, orgs = self.tables["persons"].seeded, self.tables["organizations"].seeded
        pipeline = 1 if h % 4 else 2
        first = 1 if pipeline == 1 else 1 + len(PIPELINES[0][1])
        return {"pipeline_id": pipeline, "stage_id": first + (h >> 4) % len(PIPELINES[pipeline - 1][1]),
                "owner_id": 1 + (h >> 20) % 3, "person_id": 1 + n % persons if persons else None,
                "org_id": 1 + n % orgs if orgs else None}

    def attr(self, entity: str, rid: int, name: str) -> Any:
        """One attribute of a record (cheap for seeded deals' links)."""
        stored = self.tables[entity].rows.get(rid)
        if stored is not None:
            return stored.get(name)
        if entity == "deals" and name in ("pipeline_id", "stage_id", "owner_id", "person_id", "org_id"):
            return self.deal_links(rid)[name]
        return self.row(entity, rid).get(name)

    def _seed_deals(self, n: int) -> dict[str, Any]:
        h = mix(self.seed, "deal", n)
        table = self.tables["deals"]
        links = self.deal_links(n)
        status = STATUSES[table.status[n]]
        value = float(500 + (h >> 8) % 95_000)
        updated = table.update_time[n]
        close = _iso(updated) if status in ("won", "lost") else None
        org_id = links["org_id"]
        return {
            "title": f"{self._org_name(org_id) if org_id else 'Prospect'} {DEAL_KINDS[(h >> 12) % 7]} {n}",
            **links, "value": value, "currency": CURRENCIES[(h >> 24) % 5],
            "stage_change_time": _iso(updated), "probability": None, "lost_reason": "Price" if status == "lost" else None,
            "visible_to": 3, "close_time": close, "won_time": close if status == "won" else None,
            "lost_time": close if status == "lost" else None,
            "expected_close_date": day_text(table.add_time[n] + 60 * DAY), "label_ids": [], "origin": "ManuallyCreated",
            "origin_id": None, "channel": None, "channel_id": None, "source_lead_id": None,
            "custom_fields": {
                self.key("deals", "Onboarding plan"): self.option("deals", "Onboarding plan", n),
                self.key("deals", "Contract value"): {"value": float(n * 10), "currency": "USD"},
                self.key("deals", "Go-live date"): day_text(table.add_time[n] + (30 + h % 90) * DAY),
                self.key("deals", "Region"): [self.option("deals", "Region", h >> 28)],
                self.key("deals", "External id"): f"EXT-{n:06d}",
                self.key("deals", "Seats"): float(5 + h % 200),
                self.key("deals", "Account notes"): None if h % 3 else f"Key account since {day_text(table.add_time[n])}",
                self.key("deals", "Hotline"): f"+1800{n:07d}" if h % 5 == 0 else None,
                self.key("deals", "Billing address"): self._address(org_id or n, "org-address")["value"],
            },
        }

    def _seed_activities(self, n: int) -> dict[str, Any]:
        h = mix(self.seed, "activity", n)
        deals = self.tables["deals"].seeded
        kind = ("call", "meeting", "email", "task")[h % 4]
        due = self.tables["activities"].add_time[n] + (h % 30) * DAY
        return {
            "subject": f"{kind.capitalize()} about deal {1 + n % max(1, deals)}", "type": kind,
            "owner_id": 1 + (h >> 8) % 3, "creator_user_id": 1, "deal_id": 1 + n % deals if deals else None,
            "lead_id": None, "person_id": 1 + n % max(1, self.tables["persons"].seeded), "org_id": None,
            "project_id": None, "due_date": day_text(due), "due_time": f"{9 + h % 8:02d}:00", "duration": "00:30",
            "busy": kind == "meeting", "done": bool(h >> 12 & 1), "location": None, "participants": [],
            "attendees": [], "public_description": "", "priority": None, "note": "",
            "custom_fields": {self.key("activities", "Outcome"): "Positive" if h % 3 == 0 else None},
        }

    def _seed_products(self, n: int) -> dict[str, Any]:
        h = mix(self.seed, "product", n)
        price = float(10 + h % 990)
        return {
            "name": f"{('Starter', 'Team', 'Business', 'Support', 'Training')[n % 5]} plan {n}", "code": f"P-{n:04d}",
            "description": "", "unit": "seat", "tax": 0.0, "category": None, "owner_id": 1, "is_linkable": True,
            "visible_to": 3, "billing_frequency": "monthly", "billing_frequency_cycles": None,
            "prices": [{"product_id": n, "price": price, "currency": "USD", "cost": round(price * 0.4, 2),
                        "direct_cost": None, "notes": ""}],
            "custom_fields": {self.key("products", "SKU"): f"SKU-{n:05d}",
                              self.key("products", "Weight kg"): round((h % 500) / 10, 1)},
        }

    def _seed_leads(self, n: int) -> dict[str, Any]:
        h = mix(self.seed, "lead", n)
        persons, orgs = self.tables["persons"].seeded, self.tables["organizations"].seeded
        return {
            "title": f"{self._org_name(1 + n % orgs) if orgs else 'Prospect'} lead", "owner_id": 1 + h % 3,
            "creator_id": 1, "label_ids": [], "person_id": 1 + n % persons if persons else None,
            "organization_id": 1 + n % orgs if orgs else None, "source_name": "API", "origin": "API",
            "origin_id": None, "channel": None, "channel_id": None, "source_deal_id": None, "was_seen": bool(h & 1),
            "value": {"amount": float(1000 + h % 20_000), "currency": "USD"} if h % 4 else None,
            "expected_close_date": None, "next_activity_id": None, "visible_to": "3", "cc_email": "leads@sandbox.example",
            self.key("deals", "External id"): f"LEAD-{n:05d}",
            self.key("deals", "Onboarding plan"): self.option("deals", "Onboarding plan", h),
        }

    def _seed_notes(self, n: int) -> dict[str, Any]:
        h = mix(self.seed, "note", n)
        deals = max(1, self.tables["deals"].seeded)
        return {"content": f"Call summary {n}: next step is a demo.", "user_id": 1 + h % 3, "deal_id": 1 + n % deals,
                "person_id": None, "org_id": None, "lead_id": None, "project_id": None, "task_id": None,
                "active_flag": True, "pinned_to_deal_flag": h % 7 == 0, "pinned_to_person_flag": False,
                "pinned_to_organization_flag": False, "pinned_to_lead_flag": False, "pinned_to_project_flag": False,
                "pinned_to_task_flag": False, "last_update_user_id": 1}

    # -- snapshot -----------------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}

    def load(self, data: dict[str, Any]) -> None:
        vars(self).update(data)


def _iso(ts: float) -> str:
    return utc_text(ts)
