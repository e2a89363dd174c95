"""Pipedrive's entities as this client uses them: API version, id type, pagination, filters, search,
custom-field definitions, web path."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_crm.common.errors import CrmInputError

MAX_PAGE = 500


@dataclass(frozen=True)
class Entity:
    """What the client knows about one Pipedrive entity.

    :param name: the entity's path segment (``deals``).
    :param version: ``v1`` or ``v2``: the API version the client uses for it.
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
# standard fields a write may carry besides those the field definitions list
STANDARD_FIELDS = frozenset({
    "title", "name", "value", "currency", "status", "stage_id", "pipeline_id", "owner_id", "person_id", "org_id",
    "organization_id", "emails", "phones", "visible_to", "label_ids", "labels", "expected_close_date", "probability",
    "lost_reason", "won_time", "lost_time", "close_time", "is_archived", "archive_time", "due_date", "due_time",
    "duration", "deal_id", "lead_id", "project_id", "type", "done", "subject", "note", "public_description",
    "location", "busy", "participants", "attendees", "content", "code", "description", "unit", "tax", "prices",
    "category", "address", "first_name", "last_name", "marketing_status", "birthday", "job_title", "postal_address",
    "notes", "add_time", "update_time", "user_id", "pinned_to_deal_flag", "pinned_to_person_flag",
})
CUSTOM_FIELDS_IN_V2 = {"deals", "persons", "organizations", "products", "activities"}


def entity_info(name: str) -> Entity:
    if name not in ENTITIES:
        raise CrmInputError(f"unknown Pipedrive entity {name!r}; known: {', '.join(sorted(ENTITIES))}")
    return ENTITIES[name]
