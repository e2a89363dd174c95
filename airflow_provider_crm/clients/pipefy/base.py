"""The sync client's request layer: one gql ``Client`` over :class:`PipefySyncTransport`, retries
(common/retry.py), errors named after what was being done, pagination, field lookups."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from gql import Client, GraphQLRequest
from graphql import DocumentNode

from airflow_provider_crm.clients.pipefy import pagination
from airflow_provider_crm.clients.pipefy.errors import named_error
from airflow_provider_crm.clients.pipefy.settings import PipefySettings
from airflow_provider_crm.clients.pipefy.transport import PipefySyncTransport
from airflow_provider_crm.clients.pipefy.values import resolve_field, to_pipefy_value
from airflow_provider_crm.common.errors import CrmApiError, CrmInputError
from airflow_provider_crm.common.ratelimit.limiter import RateLimiter
from airflow_provider_crm.common.retry import call_with_retries
from airflow_provider_crm.common.writes import create_safely

UPDATE_FIELDS_BATCH = 30  # updateFieldsValues takes at most 30 values


def iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PipefyRequests:
    """Sends documents through gql; the API methods are on :class:`PipefyClient`.

    :param settings: the connection's settings.
    :param limiter: the limiter of the connection's credential (shared by every client of it).
    :param timeout: seconds to wait for an answer.
    :param on_secret: called with each access token fetched (the hook passes Airflow's secret masking).
    """

    def __init__(self, settings: PipefySettings, limiter: RateLimiter, timeout: float = 60.0,
                 on_secret: Callable[[str], None] | None = None, log: Any = None) -> None:
        self.settings = settings
        self.limiter = limiter
        self.timeout = timeout
        self.log = log or logging.getLogger(__name__)
        self.transport = PipefySyncTransport(settings, limiter, timeout, on_secret)
        self._session = Client(transport=self.transport, execute_timeout=None).connect_sync()
        self._metadata: dict[tuple[str, str], Any] = {}

    @property
    def page_size(self) -> int:
        return self.settings.page_size

    def post_once(self, document: DocumentNode, variables: dict[str, Any], kind: str = "read") -> dict[str, Any]:
        """One request, no retry: the answer's data or a typed error."""
        request = GraphQLRequest(document, variable_values=variables)
        return self._session.execute(request, kind=kind)

    def execute(self, document: DocumentNode, variables: dict[str, Any] | None = None, *, write: bool = False,
                description: str = "") -> dict[str, Any]:
        """Run one GraphQL document (reads and idempotent writes are retried on transient errors)."""
        description = description or "pipefy request"
        try:
            return call_with_retries(
                lambda: self.post_once(document, variables or {}, "write" if write else "read"),
                idempotent=True, description=description, stats=self.limiter.stats,
            )
        except CrmApiError as err:
            raise named_error(err, description) from None

    def create(self, send: Callable[[], dict[str, Any]], lookup: Callable[[], dict[str, Any] | None] | None,
               description: str) -> dict[str, Any]:
        """A create, retried only when that cannot make a second record (common/writes.py)."""
        try:
            return create_safely(send, lookup=lookup, description=description, stats=self.limiter.stats)
        except CrmApiError as err:
            raise named_error(err, description) from None

    def paginate(self, document: DocumentNode, variables: dict[str, Any], path: list[str]) -> Iterator[dict[str, Any]]:
        """Nodes of a Relay connection at ``path`` in the answer, page by page (see pagination.py)."""
        return pagination.paginate(lambda v, what: self.execute(document, v, description=what), variables, path,
                                   self.page_size)

    # -- fields ------------------------------------------------------------------------------------
    def resolve_field(self, fields: list[dict[str, Any]], key: str, where: str) -> dict[str, Any]:
        """A field by id or by label (case-insensitive); the error lists what exists."""
        return resolve_field(fields, key, where)

    def value(self, field: dict[str, Any], value: Any) -> Any:
        """A value in the write format of ``field`` (dates in the connection's ``date_format``)."""
        return to_pipefy_value(field, value, self.settings.date_format)

    def key_value(self, fields_meta: list[dict[str, Any]], values: dict[str, Any], key_field: str, where: str
                  ) -> tuple[dict[str, Any], str]:
        """The key field's metadata and its value in ``values`` (keyed by id or label), as Pipefy stores it
        (the form ``findCards`` / ``findRecords`` match on)."""
        key_meta = resolve_field(fields_meta, key_field, where)
        for name, value in values.items():
            if resolve_field(fields_meta, name, where)["id"] == key_meta["id"]:
                if value in (None, ""):
                    break
                converted = self.value(key_meta, value)
                return key_meta, converted if isinstance(converted, str) else str(converted)
        raise CrmInputError(f"{where}: key field {key_field!r} has no value among the fields given")

    def key_lookup(self, fields_meta: list[dict[str, Any]], values: dict[str, Any], key_field: str | None,
                   where: str, find: Callable[[str, str], list[dict[str, Any]]]
                   ) -> Callable[[], dict[str, Any] | None] | None:
        """For a create with ``key_field``: finds what an earlier attempt may have created (``find(field
        id, value)``), so a create whose answer was lost is looked up instead of sent again."""
        if not key_field:
            return None
        key_meta, key_value = self.key_value(fields_meta, values, key_field, where)
        return lambda: next(iter(find(key_meta["id"], key_value)), None)

    def converted(self, fields_meta: list[dict[str, Any]], values: dict[str, Any], where: str
                  ) -> list[tuple[str, Any]]:
        """``(field id, value in write format)`` for values keyed by field id or label."""
        fields = [(resolve_field(fields_meta, key, where), value) for key, value in values.items()]
        return [(field["id"], self.value(field, value)) for field, value in fields]
