"""Reading an entity's records updated in a range, for exports: the API's filters, the end applied
where the API cannot, offset pages' repeats dropped, parallel time slices (:mod:`.slicing`), the CSV
columns the entity declares, and deleted / archived records marked."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from airflow_provider_crm.clients.pipedrive.client import PipedriveClient
from airflow_provider_crm.clients.pipedrive.entities import MAX_PAGE, entity_info
from airflow_provider_crm.clients.pipedrive.fields import FieldMap
from airflow_provider_crm.clients.pipedrive.slicing import Slice, fetch_balanced_pages
from airflow_provider_crm.common.fanin import chunks, merge_parallel
from airflow_provider_crm.common.rawpage import RawPage

# what RangeReader, unique_ids and mark() read of a record; with ``shallow`` the rest is left undecoded
SHALLOW_KEYS = frozenset({"id", "update_time", "is_deleted", "is_archived", "status"})


class RangeReader:
    """The records of one entity updated in a range, read in ``slices`` parallel parts.

    :param client: the Pipedrive client.
    :param entity: the entity.
    :param include_archived: add the archived list (deals).
    :param include_deleted: add deleted records (deals, ``status=deleted``).
    :param slices: parallel time slices (rebalanced as they run where the API filters by ``updated_until``).
    :param shallow: decode only :data:`SHALLOW_KEYS` of each record and leave its other values as raw
        JSON text (``msgspec.Raw``) for a writer to pass through.
    """

    def __init__(self, client: PipedriveClient, entity: str, *, include_archived: bool = False,
                 include_deleted: bool = False, slices: int = 1, shallow: bool = False) -> None:
        self.client = client
        # shallow: records come with only what the reader and mark() look at decoded; the rest stays JSON
        # text that the export writes back as it came (a third of the CPU a 500-record page costs)
        self.shallow = SHALLOW_KEYS if shallow else None
        self.entity = entity
        self.include_archived = include_archived
        self.include_deleted = include_deleted
        self.slices = slices
        self.stats: dict[str, int] = {}  # the balanced slices' splits
        self._fields: ThreadPoolExecutor | None = None
        self._fmap: Future[FieldMap] | None = None

    def load_fields(self) -> None:
        """Start loading the entity's field map in a thread, so that it arrives with the first pages."""
        self._fields = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-fields")
        self._fmap = self._fields.submit(self.client.field_map, self.entity)

    def field_map(self) -> FieldMap | None:
        """The field map :meth:`load_fields` asked for (waiting for it), else None."""
        return self._fmap.result() if self._fmap is not None else None

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fields is not None:
            self._fields.shutdown()

    def filters(self, start: datetime | None, end: datetime | None, status: str | None = None) -> dict[str, Any]:
        """List filters for records updated in ``[start, end)``, in the order that keeps pages stable."""
        info = entity_info(self.entity)
        filters: dict[str, Any] = {}
        if start is not None:
            filters["updated_since"] = rfc3339(start) if info.version == "v2" else v1_time(start)
        if end is not None and info.server_side_until:
            filters["updated_until"] = rfc3339(end)
        if "sort_by" in info.filters:
            filters.update({"sort_by": "update_time", "sort_direction": "asc"})
        elif "sort" in info.filters:
            # offset pages in id order: a record updated while we page stays where it was
            filters["sort"] = "id ASC"
        if status:
            filters["status"] = status
        return filters

    @property
    def _kinds(self) -> list[str]:
        return ["live"] + ["archived"] * self.include_archived + ["deleted"] * self.include_deleted

    def plan(self, start: datetime | None, end: datetime | None, in_flight: Callable[[float], int]
             ) -> tuple[datetime | None, int]:
        """Choose the slices for ``[start, end)`` by themselves, where the API can slice by update time.

        One request per list (live, archived, deleted) asks for its earliest record in the range: its
        duration is the latency ``in_flight`` turns into a number of slices (enough requests in flight
        for the plan's rate), and its update time bounds a full export from below, so a full export is
        sliced like an incremental one. Returns the start to slice from and the number of slices.
        """
        info = entity_info(self.entity)
        if end is None or not (info.server_side_until and "sort_by" in info.filters):
            return start, self.slices  # as asked: an even split of an incremental range, else one stream
        # the answers' latency, from each request's slot to its answer: a wait for the window (other
        # tasks on the token) is not latency, and counting it would ask for more requests in flight
        stats = self.client.transport.limiter.stats
        mark = stats.answers_mark()
        firsts = [self._earliest(kind, start, end) for kind in self._kinds]
        latency = stats.latency_since(mark) or 0.0
        known = [moment for moment in firsts if moment is not None]
        if not known:
            return start, 1  # nothing in the range: one reader confirms it
        lower = start if start is not None else min(known).replace(microsecond=0)
        return lower, in_flight(latency)

    def _earliest(self, kind: str, start: datetime | None, end: datetime) -> datetime | None:
        info = entity_info(self.entity)
        params = {**self.filters(start, end, "deleted" if kind == "deleted" else None), "limit": 1}
        path = f"{info.path}/archived" if kind == "archived" else info.path
        first = (self.client.request("GET", info.version, path, params=params, kind="read").get("data") or [None])[0]
        return parse_update_time(first.get("update_time")) if isinstance(first, dict) else None

    def _slice_records(self, start: datetime | None, end: datetime | None) -> Iterator[dict[str, Any]]:
        records = self._fetch(start, end)
        info = entity_info(self.entity)
        if info.pagination == "offset":
            records = unique_ids(records)
        if end is not None and not info.server_side_until:
            # the API takes updated_since only (v1 leads and notes, v2 products): apply the half-open end
            # here, at the same second precision, or a record updated after `end` would come out twice
            until = end.astimezone(timezone.utc).replace(microsecond=0)
            records = (r for r in records if not updated_at_or_after(r, until))
        yield from records

    def _fetch(self, start: datetime | None, end: datetime | None) -> Iterator[dict[str, Any]]:
        yield from self.client.iter_records(self.entity, shallow=self.shallow, **self.filters(start, end))
        if self.include_archived:
            yield from self.client.iter_records(self.entity, archived=True, shallow=self.shallow,
                                                **self.filters(start, end))
        if self.include_deleted:
            yield from self.client.iter_records(self.entity, shallow=self.shallow,
                                                **self.filters(start, end, "deleted"))

    def pages(self, start: datetime | None, end: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """:meth:`records` a page (a list) at a time: what exports write from. Balanced slices wait as
        JSON text between the readers and here (:class:`RawPage`), and are decoded in the caller's thread."""
        for page in self.raw_pages(start, end):
            yield page.records(self.shallow) if isinstance(page, RawPage) else page

    def raw_pages(self, start: datetime | None, end: datetime | None) -> Iterator[RawPage | list[dict[str, Any]]]:
        """:meth:`pages`, those of balanced slices of a shallow reader left as :class:`RawPage` (records
        as JSON text): decode them with ``page.records(SHALLOW_KEYS)``, where it suits."""
        if start is not None and end is not None and self._balanced(start, end):
            yield from self._balanced_pages(start, end)
        else:
            yield from chunks(self.records(start, end), MAX_PAGE)

    def records(self, start: datetime | None, end: datetime | None) -> Iterator[dict[str, Any]]:
        """Every record updated in ``[start, end)`` (None: unbounded), each once."""
        if self.slices <= 1 or start is None or end is None:
            yield from self._slice_records(start, end)
            return
        if self._balanced(start, end):
            for page in self.pages(start, end):
                yield from page
            return
        step = (end - start) / self.slices
        bounds = [(start + step * i, start + step * (i + 1) if i < self.slices - 1 else end)
                  for i in range(self.slices)]
        # whole seconds, so slice edges line up with the API's second-precision filters
        bounds = [(a.replace(microsecond=0), b.replace(microsecond=0) if b != end else b) for a, b in bounds]
        sources = [lambda a=a, b=b: self._slice_records(a, b) for a, b in bounds if b > a]
        yield from merge_parallel(sources, self.slices, max_buffered=2000)

    def reads_raw_pages(self, start: datetime | None, end: datetime | None) -> bool:
        """Whether :meth:`raw_pages` gives :class:`RawPage` pages for this range (shallow balanced slices)."""
        return self.shallow is not None and self._balanced(start, end)

    def _balanced(self, start: datetime | None, end: datetime | None) -> bool:
        """Whether the range is read in rebalanced slices: several asked for, a bounded range, and an
        API that filters by ``updated_until`` and sorts by update time."""
        info = entity_info(self.entity)
        return (self.slices > 1 and start is not None and end is not None and info.server_side_until
                and "sort_by" in info.filters)

    def _balanced_pages(self, start: datetime, end: datetime) -> Iterator[RawPage | list[dict[str, Any]]]:
        """The interval in ``slices`` parallel time slices, rebalanced as they run (clients/pipedrive/slicing.py):
        :class:`RawPage` pages when the reader is shallow, else lists of records."""
        kinds = self._kinds
        first, last = int(start.timestamp()), int(end.timestamp())
        step = (last - first) / self.slices
        cuts = [first + round(step * i) for i in range(self.slices)] + [last]
        slices = [Slice(kind, a, b) for kind in kinds for a, b in itertools.pairwise(cuts) if b > a]

        def fetch(kind: str, a: int, b: int) -> Iterator[RawPage] | Iterator[list[dict[str, Any]]]:
            filters = self.filters(from_epoch(a), from_epoch(b), "deleted" if kind == "deleted" else None)
            if self.shallow is not None:
                return self.client.iter_record_raw_pages(self.entity, archived=kind == "archived", **filters)
            return self.client.iter_record_pages(self.entity, archived=kind == "archived", **filters)

        def positions(page: RawPage | list[dict[str, Any]]) -> list[int | None]:
            if isinstance(page, RawPage):
                return [epoch_of(moment) for moment in page.update_times()]
            return [update_epoch(record) for record in page]

        yield from fetch_balanced_pages(fetch, positions, slices, self.slices, min_split_records=2 * MAX_PAGE,
                                        page_size=MAX_PAGE, stats=self.stats)


def mark(record: dict[str, Any], fmap: FieldMap | None, *, labels: bool, archived_too: bool) -> tuple[dict[str, Any], str]:
    """A record as an export writes it: custom fields by name (with ``fmap``), a deleted one with
    ``"_deleted": true``, an archived one (``archived_too``) with ``"_archived": true``. Returns it and
    which of ``deleted``, ``archived`` or ``records`` it counts as."""
    deleted = bool(record.get("is_deleted")) or record.get("status") == "deleted"
    archived = bool(record.get("is_archived"))
    if fmap is not None:
        record = fmap.rename_record(record, labels=labels)
    if deleted:
        record["_deleted"] = True
        return record, "deleted"
    if archived and archived_too:
        record["_archived"] = True
        return record, "archived"
    return record, "records"


def mark_page(records: Iterable[dict[str, Any]], fmap: FieldMap | None, *, labels: bool, archived_too: bool
              ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """:func:`mark` each record; returns them and how many counted as ``records``, ``deleted`` and
    ``archived``."""
    counts = {"records": 0, "deleted": 0, "archived": 0}
    marked = []
    for record in records:
        record, counted = mark(record, fmap, labels=labels, archived_too=archived_too)
        counts[counted] += 1
        marked.append(record)
    return marked, counts


def parse_update_time(value: Any) -> datetime | None:
    """``update_time`` in v2 (RFC 3339), v1 (``YYYY-MM-DD HH:MM:SS`` UTC) or leads (with milliseconds)."""
    if not value:
        return None
    text = str(value).strip().replace(" ", "T").replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def updated_at_or_after(record: dict[str, Any], until: datetime) -> bool:
    moment = parse_update_time(record.get("update_time"))
    return moment is not None and moment.replace(microsecond=0) >= until


def unique_ids(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Offset pages can shift when a record enters the filtered set mid-export: never emit one twice."""
    seen: set[Any] = set()
    for record in records:
        if record.get("id") in seen:
            continue
        seen.add(record.get("id"))
        yield record


def _utc(moment: datetime) -> datetime:
    """The moment in UTC; a naive one is taken as UTC."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def v1_time(moment: datetime) -> str:
    """A v1 filter's time: ``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def rfc3339(moment: datetime) -> str:
    """A v2 filter's time: RFC 3339 in UTC, whole seconds."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def declared_columns(fmap: FieldMap | None, by_name: bool, deleted: bool, archived: bool) -> list[str]:
    """A stable CSV header: ``id``, the entity's declared fields (custom ones by name when ``by_name``),
    then the tombstone columns asked for."""
    columns = ["id"]
    for definition in fmap.definitions if fmap is not None else []:
        custom = definition.get("key") in fmap.by_key  # type: ignore[union-attr]
        name = str(definition["name"] if custom and by_name else definition.get("key"))
        if name not in columns:
            columns.append(name)
    return columns + ["_deleted"] * deleted + ["_archived"] * archived


def from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def update_epoch(record: dict[str, Any]) -> int | None:
    return epoch_of(record.get("update_time"))


def epoch_of(update_time: Any) -> int | None:
    """An ``update_time`` (see :func:`parse_update_time`) in epoch seconds, None if it has none."""
    moment = parse_update_time(update_time)
    return None if moment is None else int(moment.timestamp())
