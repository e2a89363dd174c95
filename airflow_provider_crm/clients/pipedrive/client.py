"""The Pipedrive API client: entities, custom fields, search, lists and mail, sync and async.

Each API method is written once, in :class:`PipedriveApi`, as a generator that yields what it needs
from the wire (a :class:`Call`, or :class:`Pages` to read whole) and receives the answer; the sync
:class:`PipedriveClient` and the async :class:`PipedriveAsyncClient` drive it with their own I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, TypeVar

from airflow_provider_crm.clients.pipedrive.entities import ENTITIES, MAX_PAGE, entity_info
from airflow_provider_crm.clients.pipedrive.fields import (
    FieldMap,
    encode_record,
    key_of,
    matches,
    normalise_definition,
    record_keys,
)
from airflow_provider_crm.clients.pipedrive.pagination import Pages
from airflow_provider_crm.clients.pipedrive.transport import AsyncTransport, Call, SyncTransport
from airflow_provider_crm.common import jsoncodec
from airflow_provider_crm.common.errors import CrmInputError
from airflow_provider_crm.common.rawpage import RawPage
from airflow_provider_crm.common.readahead import read_ahead
from airflow_provider_crm.common.retry import call_with_retries

T = TypeVar("T")
Op = Generator[Call | Pages, Any, T]  # an API method: yields what it needs, returns its result
MAIL_FOLDERS = ("inbox", "drafts", "sent", "archive")


def advance(op: Op[Any], answer: Any) -> tuple[bool, Any]:
    """Give an API method the answer it waits for: ``(True, its result)`` once it returns, else
    ``(False, what it needs next)``."""
    try:
        return False, op.send(answer)
    except StopIteration as done:
        return True, done.value


def _writable(entity: str) -> Any:
    info = entity_info(entity)
    if info.read_only:
        raise CrmInputError(f"{entity} are read-only here")
    return info


class PipedriveApi:
    """The API methods, free of I/O (see the module doc). Field maps are fetched once per client."""

    def __init__(self) -> None:
        self._field_maps: dict[str, FieldMap] = {}

    # -- lists (read page by page by the client) -------------------------------------------------
    @staticmethod
    def records_pages(entity: str, *, archived: bool = False, shallow: frozenset[str] | None = None,
                      **filters: Any) -> Pages:
        """Every record of ``entity`` matching ``filters`` (checked against the entity registry).
        ``archived=True`` reads the separate list of archived records (deals); ``shallow``: see :class:`Pages`."""
        info = entity_info(entity)
        unknown = set(filters) - info.filters - {"limit"}
        if unknown:
            raise CrmInputError(f"{entity}: unsupported filter(s) {sorted(unknown)}; supported: {sorted(info.filters)}")
        if archived and not info.archived:
            raise CrmInputError(f"{entity} have no archived list; only {[e for e in ENTITIES if ENTITIES[e].archived]}")
        params = {k: v for k, v in filters.items() if v is not None}
        path = f"{info.path}/archived" if archived else info.path
        return Pages(info.version, path, params, style=info.pagination, shallow=shallow)

    @staticmethod
    def mail_pages(folder: str = "inbox") -> Pages:
        if folder not in MAIL_FOLDERS:
            raise CrmInputError(f"mail folder must be inbox, drafts, sent or archive; got {folder!r}")
        return Pages("v1", "/mailbox/mailThreads", {"folder": folder}, page_size=50, style="offset")

    # -- API methods -------------------------------------------------------------------------------
    def field_map_op(self, entity: str) -> Op[FieldMap]:
        """Field definitions of an entity, fetched once per client."""
        info = entity_info(entity)
        if entity not in self._field_maps:
            definitions: list[dict[str, Any]] = []
            if info.fields_endpoint:
                version = "v2" if info.version == "v2" else "v1"
                listed = yield Pages(version, f"/{info.fields_endpoint}")
                definitions = [normalise_definition(d) for d in listed]
            self._field_maps[entity] = FieldMap(entity, definitions)
        return self._field_maps[entity]

    def encode_op(self, entity: str, data: dict[str, Any]) -> Op[dict[str, Any]]:
        """Data for a write: custom fields may be given by name and options by label."""
        fmap = (yield from self.field_map_op(entity)) if entity_info(entity).fields_endpoint else None
        return encode_record(entity, data, fmap)

    def get_op(self, entity: str, record_id: Any) -> Op[dict[str, Any]]:
        info = entity_info(entity)
        return (yield Call("GET", info.version, f"{info.path}/{record_id}"))["data"]

    def create_op(self, entity: str, data: dict[str, Any], key_field: str | None = None,
                  key_value: Any = None) -> Op[dict[str, Any]]:
        """Create a record. A create refused before it ran (429, 503) is sent again; one whose answer
        was lost is sent again only after a lookup by ``key_field`` (``key_value``, by default its
        value in ``data``; ``email`` finds the first of ``emails``) finds nothing, and without a key
        it is not sent again (see common/writes.py)."""
        info = _writable(entity)
        body = yield from self.encode_op(entity, data)
        if key_field and key_value in (None, ""):
            key_value = key_of(data, key_field)
        lookup = None
        if key_field and key_value not in (None, ""):
            field, value = key_field, key_value

            def lookup() -> Op[dict[str, Any] | None]:  # answers as the create would: an envelope
                found = yield from self.find_one_op(entity, field, value)
                return None if found is None else {"data": found}

        answer = yield Call("POST", info.version, info.path, json=body, kind="write",
                            description=f"create {entity}", lookup=lookup)
        return answer["data"]

    def update_op(self, entity: str, record_id: Any, data: dict[str, Any]) -> Op[dict[str, Any]]:
        info = _writable(entity)
        method = "PATCH" if info.version == "v2" or entity == "leads" else "PUT"
        body = yield from self.encode_op(entity, data)
        return (yield Call(method, info.version, f"{info.path}/{record_id}", json=body))["data"]

    def delete_op(self, entity: str, record_id: Any) -> Op[Any]:
        info = _writable(entity)
        return (yield Call("DELETE", info.version, f"{info.path}/{record_id}"))["data"]

    def search_op(self, entity: str, term: str, fields: str | None = None, exact_match: bool = True,
                  limit: int = 10) -> Op[list[dict[str, Any]]]:
        """Items matching ``term`` (exact match is case-insensitive on Pipedrive's side)."""
        if not entity_info(entity).search:
            raise CrmInputError(f"{entity} cannot be searched")
        params: dict[str, Any] = {"term": term, "exact_match": str(exact_match).lower(), "limit": limit}
        if fields:
            params["fields"] = fields
        body = yield Call("GET", "v2", f"/{entity}/search", params=params, kind="search")
        return [entry["item"] for entry in (body.get("data") or {}).get("items") or []]

    def find_one_op(self, entity: str, key: str, value: Any) -> Op[dict[str, Any] | None]:
        """The record whose ``key`` (standard field or custom field by name) equals ``value``, or None."""
        fmap = yield from self.field_map_op(entity)
        is_custom = key.lower() in fmap.by_name or key in fmap.by_key
        search_field = "custom_fields" if is_custom else {"emails": "email", "phones": "phone"}.get(key, key)
        for item in (yield from self.search_op(entity, str(value), fields=search_field)):
            record = yield from self.get_op(entity, item["id"])
            if matches(record, key, value, fmap):
                return record
        return None

    def index_by_op(self, entity: str, key: str) -> Op[dict[str, dict[str, Any]]]:
        """Every live record of ``entity`` by its value(s) under ``key`` (see :func:`record_keys`): one
        list call per 500 records instead of one search per looked-up value. The first record wins
        where several share a value, as :meth:`find_one_op` answers the first match."""
        fmap = yield from self.field_map_op(entity)
        index: dict[str, dict[str, Any]] = {}
        for record in (yield self.records_pages(entity)):
            for value in record_keys(record, key, fmap):
                index.setdefault(value, record)
        return index

    def thread_messages_op(self, thread_id: Any) -> Op[list[dict[str, Any]]]:
        return (yield Call("GET", "v1", f"/mailbox/mailThreads/{thread_id}/mailMessages")).get("data") or []


class PipedriveClient(PipedriveApi):
    """Pipedrive's API over ``requests``; lists are read one page ahead in a thread.

    :param transport: the connection's sync transport.
    """

    def __init__(self, transport: SyncTransport) -> None:
        super().__init__()
        self.transport = transport

    def run(self, op: Op[T]) -> T:
        """Drive an API method with this client's I/O."""
        done, step = advance(op, None)
        while not done:
            done, step = advance(op, self._answer(step))
        return step  # type: ignore[no-any-return]

    def _answer(self, step: Call | Pages) -> Any:
        if isinstance(step, Pages):
            return list(self.pages(step))
        lookup = step.lookup
        return self.transport.request(step, lookup=None if lookup is None else lambda: self.run(lookup()))

    def request(self, method: str, version: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, kind: str | None = None) -> dict[str, Any]:
        """One API call, retried when safe (see :meth:`SyncTransport.request`). Returns the whole envelope."""
        return self.transport.request(Call(method, version, path, params, json, kind))  # type: ignore[no-any-return]

    def pages(self, pages: Pages) -> Iterator[dict[str, Any]]:
        """The items of a list, the next page requested while this one is consumed."""
        for page in self.page_lists(pages):
            yield from page

    def page_lists(self, pages: Pages) -> Iterator[list[dict[str, Any]]]:
        """The items of a list a page at a time, the next page requested while this one is consumed."""
        if pages.kind == "none":
            yield list(self.request("GET", pages.version, pages.path, params=pages.params or None).get("data") or [])
            return
        check = pages.check()
        for answer in self._answers(pages):
            items = (list(jsoncodec.iter_items(answer.data)) if pages.shallow is None
                     else jsoncodec.shallow_items(answer.data, pages.shallow))
            yield list(check.page(items)) if check else items

    def raw_pages(self, pages: Pages) -> Iterator[RawPage]:
        """The pages of a cursor list as their JSON text (:class:`RawPage`), the next page requested while
        this one is consumed. (Offset pages overlap, and dropping the repeats needs them decoded.)"""
        if pages.kind != "cursor":
            raise ValueError(f"{pages.what}: raw pages are read from cursor lists only, not {pages.kind!r} ones")
        for answer in self._answers(pages):
            yield RawPage(answer.data)

    def _answers(self, pages: Pages) -> Iterator[jsoncodec.Envelope]:
        def fetch(params: dict[str, Any]) -> jsoncodec.Envelope:
            call = Call("GET", pages.version, pages.path, params)
            return call_with_retries(lambda: self.transport.request_once(call, lazy=True), idempotent=True,
                                     description=call.label, stats=self.transport.limiter.stats)

        yield from read_ahead(fetch, pages.first(), lambda params, page: pages.following(params, page.additional_data))

    def paginate(self, version: str, path: str, params: dict[str, Any] | None = None, page_size: int = MAX_PAGE,
                 style: str | None = None) -> Iterator[dict[str, Any]]:
        """Yield the items of a list endpoint (see :class:`Pages`)."""
        return self.pages(Pages(version, path, params, page_size, style))

    def iter_records(self, entity: str, *, archived: bool = False, shallow: frozenset[str] | None = None,
                     **filters: Any) -> Iterator[dict[str, Any]]:
        return self.pages(self.records_pages(entity, archived=archived, shallow=shallow, **filters))

    def iter_record_pages(self, entity: str, *, archived: bool = False, shallow: frozenset[str] | None = None,
                          **filters: Any) -> Iterator[list[dict[str, Any]]]:
        """:meth:`iter_records` a page at a time."""
        return self.page_lists(self.records_pages(entity, archived=archived, shallow=shallow, **filters))

    def iter_record_raw_pages(self, entity: str, *, archived: bool = False, **filters: Any) -> Iterator[RawPage]:
        """:meth:`iter_records` a page at a time, each kept as JSON text (v2 cursor lists)."""
        return self.raw_pages(self.records_pages(entity, archived=archived, **filters))

    def iter_mail_threads(self, folder: str = "inbox") -> Iterator[dict[str, Any]]:
        return self.pages(self.mail_pages(folder))

    def field_map(self, entity: str) -> FieldMap:
        return self.run(self.field_map_op(entity))

    def encode_record(self, entity: str, data: dict[str, Any]) -> dict[str, Any]:
        return self.run(self.encode_op(entity, data))

    def get(self, entity: str, record_id: Any) -> dict[str, Any]:
        return self.run(self.get_op(entity, record_id))

    def create(self, entity: str, data: dict[str, Any], key_field: str | None = None,
               key_value: Any = None) -> dict[str, Any]:
        return self.run(self.create_op(entity, data, key_field, key_value))

    def update(self, entity: str, record_id: Any, data: dict[str, Any]) -> dict[str, Any]:
        return self.run(self.update_op(entity, record_id, data))

    def delete(self, entity: str, record_id: Any) -> Any:
        return self.run(self.delete_op(entity, record_id))

    def search(self, entity: str, term: str, fields: str | None = None, exact_match: bool = True,
               limit: int = 10) -> list[dict[str, Any]]:
        return self.run(self.search_op(entity, term, fields, exact_match, limit))

    def find_one(self, entity: str, key: str, value: Any) -> dict[str, Any] | None:
        return self.run(self.find_one_op(entity, key, value))

    def index_by(self, entity: str, key: str) -> dict[str, dict[str, Any]]:
        return self.run(self.index_by_op(entity, key))

    def thread_messages(self, thread_id: Any) -> list[dict[str, Any]]:
        return self.run(self.thread_messages_op(thread_id))


class PipedriveAsyncClient(PipedriveApi):
    """Pipedrive's API over ``httpx`` for the event loop (triggers): every method of
    :class:`PipedriveClient`, awaited, with the same retries and errors.

    :param transport: the connection's async transport.
    """

    def __init__(self, transport: AsyncTransport) -> None:
        super().__init__()
        self.transport = transport

    async def run(self, op: Op[T]) -> T:
        """Drive an API method with this client's I/O."""
        done, step = advance(op, None)
        while not done:
            done, step = advance(op, await self._answer(step))
        return step  # type: ignore[no-any-return]

    async def _answer(self, step: Call | Pages) -> Any:
        if isinstance(step, Pages):
            return [item async for item in self.pages(step)]
        lookup = step.lookup
        return await self.transport.request(step, lookup=None if lookup is None else lambda: self.run(lookup()))

    async def request(self, method: str, version: str, path: str, *, params: dict[str, Any] | None = None,
                      json: Any = None, kind: str | None = None) -> dict[str, Any]:
        """One API call, retried when safe (see :meth:`AsyncTransport.request`). Returns the whole envelope."""
        return await self.transport.request(Call(method, version, path, params, json, kind))  # type: ignore[no-any-return]

    async def pages(self, pages: Pages) -> AsyncIterator[dict[str, Any]]:
        """The items of a list, page after page."""
        if pages.kind == "none":
            for item in (await self.request("GET", pages.version, pages.path, params=pages.params or None)
                         ).get("data") or []:
                yield item
            return
        check = pages.check()
        params: dict[str, Any] | None = pages.first()
        while params is not None:
            answer = await self.request("GET", pages.version, pages.path, params=params)
            items = answer.get("data") or []
            for item in check.page(items) if check else items:
                yield item
            params = pages.following(params, answer.get("additional_data"))

    def iter_records(self, entity: str, *, archived: bool = False, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        return self.pages(self.records_pages(entity, archived=archived, **filters))

    def iter_mail_threads(self, folder: str = "inbox") -> AsyncIterator[dict[str, Any]]:
        return self.pages(self.mail_pages(folder))

    async def field_map(self, entity: str) -> FieldMap:
        return await self.run(self.field_map_op(entity))

    async def encode_record(self, entity: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self.run(self.encode_op(entity, data))

    async def get(self, entity: str, record_id: Any) -> dict[str, Any]:
        return await self.run(self.get_op(entity, record_id))

    async def create(self, entity: str, data: dict[str, Any], key_field: str | None = None,
                     key_value: Any = None) -> dict[str, Any]:
        return await self.run(self.create_op(entity, data, key_field, key_value))

    async def update(self, entity: str, record_id: Any, data: dict[str, Any]) -> dict[str, Any]:
        return await self.run(self.update_op(entity, record_id, data))

    async def delete(self, entity: str, record_id: Any) -> Any:
        return await self.run(self.delete_op(entity, record_id))

    async def search(self, entity: str, term: str, fields: str | None = None, exact_match: bool = True,
                     limit: int = 10) -> list[dict[str, Any]]:
        return await self.run(self.search_op(entity, term, fields, exact_match, limit))

    async def find_one(self, entity: str, key: str, value: Any) -> dict[str, Any] | None:
        return await self.run(self.find_one_op(entity, key, value))

    async def index_by(self, entity: str, key: str) -> dict[str, dict[str, Any]]:
        return await self.run(self.index_by_op(entity, key))

    async def thread_messages(self, thread_id: Any) -> list[dict[str, Any]]:
        return await self.run(self.thread_messages_op(thread_id))
