"""Pipedrive operators: entity create/update/delete, bulk upsert, streaming exports, mail export."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_crm.common.claims import claim_name, claims_for
from airflow_provider_crm.common.context import emit_asset_event, push_link, task_label
from airflow_provider_crm.common.errors import CrmError, CrmInputError, CrmNotFoundError
from airflow_provider_crm.common.export import merge_parallel, open_export_writer, tuned_for_export
from airflow_provider_crm.common.progress import Progress, describe_limits, summary_table
from airflow_provider_crm.common.rows import read_rows
from airflow_provider_crm.common.slicing import Slice, fetch_balanced
from airflow_provider_crm.common.upsert import UpsertReport
from airflow_provider_crm.common.watermark import commit_export, plan_export
from airflow_provider_crm.common.writes import create_once
from airflow_provider_crm.hooks.pipedrive import (
    MAX_PAGE,
    FieldMap,
    PipedriveHook,
    entity_info,
    key_of,
    match_key,
    normalise_key,
    record_keys,
)
from airflow_provider_crm.links import PipedriveListLink, PipedriveRecordLink


class _PipedriveOperator(BaseOperator):
    def __init__(self, *, pipedrive_conn_id: str = PipedriveHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipedrive_conn_id = pipedrive_conn_id

    @cached_property
    def hook(self) -> PipedriveHook:
        return PipedriveHook(pipedrive_conn_id=self.pipedrive_conn_id)

    def summary(self, **values: Any) -> dict[str, Any]:
        return {**values, "rate_limit": self.hook.limiter.stats.as_dict()}


class PipedriveCreateOperator(_PipedriveOperator):
    """Create a record of any writable entity; custom fields may be given by name, options by label.

    :param entity: deals, persons, organizations, activities, products, leads or notes.
    :param data: the record.
    :param key_field: a field (standard or custom by name) whose value identifies the record: if one
        exists it is returned instead of creating another, so an Airflow retry creates no duplicate
        (checked under the key's claim, so an overlapping try cannot create it either). Without it a
        create is sent again only when it was refused before it ran (429, 503).
    :param pipedrive_conn_id: the Pipedrive connection.
    """

    template_fields: Sequence[str] = ("entity", "data", "key_field")
    operator_extra_links = (PipedriveRecordLink(),)

    def __init__(self, *, entity: str, data: dict[str, Any], key_field: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entity = entity
        self.data = data
        self.key_field = key_field

    def execute(self, context: Any) -> dict[str, Any]:
        if self.key_field:
            key_value = key_of(self.data, self.key_field)
            if key_value in (None, ""):
                raise CrmInputError(f"key_field {self.key_field!r} has no value in data")
            # under the key's claim, so a retry overlapping a zombie attempt cannot create it twice
            record, created = create_keyed(self.hook, self.entity, self.key_field, key_value, self.data,
                                           trust_absent=False)
        else:
            record, created = self.hook.create(self.entity, self.data), True
        push_link(context, PipedriveRecordLink.xcom_key, self.hook.record_url(self.entity, record["id"]))
        return self.summary(entity=self.entity, id=record["id"], created=created)


def create_keyed(hook: PipedriveHook, entity: str, key_field: str, key_value: Any, data: dict[str, Any], *,
                 trust_absent: bool) -> tuple[dict[str, Any], bool]:
    """The record whose ``key_field`` is ``key_value``, created from ``data`` at most once, whoever else
    writes the same key at the same time (common/writes.py ``create_once``).

    :param trust_absent: the caller's own list (an upsert's index) already says no record has the key,
        so a search is made only when a claim mark says a create of this key may have landed since.
    """
    fmap = hook.field_map(entity)

    def recorded(record_id: str) -> dict[str, Any] | None:
        try:
            record = hook.get(entity, int(record_id) if entity_info(entity).id_type is int else record_id)
        except (CrmNotFoundError, ValueError):
            return None
        if record.get("is_deleted") or match_key(key_value) not in record_keys(record, key_field, fmap):
            return None
        return record

    def find(suspect: bool) -> dict[str, Any] | None:
        if trust_absent and not suspect:
            return None
        return hook.find_one(entity, key_field, key_value)

    name = claim_name("pipedrive", hook.settings["base_url"], entity, key_field.lower(), match_key(key_value))
    return create_once(claims_for(hook.limiter.store), name, recorded=recorded, find=find,
                       create=lambda: hook.create(entity, data, key_field=key_field, key_value=key_value),
                       ident=lambda record: record["id"])


class PipedriveUpdateOperator(_PipedriveOperator):
    """Update a record; custom fields may be given by name.

    :param entity: the entity.
    :param record_id: the record's id.
    :param data: fields to change.
    :param pipedrive_conn_id: the Pipedrive connection.
    """

    template_fields: Sequence[str] = ("entity", "record_id", "data")
    operator_extra_links = (PipedriveRecordLink(),)

    def __init__(self, *, entity: str, record_id: Any, data: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entity = entity
        self.record_id = record_id
        self.data = data

    def execute(self, context: Any) -> dict[str, Any]:
        record = self.hook.update(self.entity, self.record_id, self.data)
        push_link(context, PipedriveRecordLink.xcom_key, self.hook.record_url(self.entity, record["id"]))
        return self.summary(entity=self.entity, id=record["id"], updated=sorted(self.data))


class PipedriveDeleteOperator(_PipedriveOperator):
    """Delete a record. Already gone counts as deleted unless ``must_exist``.

    :param entity: the entity.
    :param record_id: the record's id.
    :param must_exist: fail when it does not exist.
    :param pipedrive_conn_id: the Pipedrive connection.
    """

    template_fields: Sequence[str] = ("entity", "record_id")

    def __init__(self, *, entity: str, record_id: Any, must_exist: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entity = entity
        self.record_id = record_id
        self.must_exist = must_exist

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            self.hook.delete(self.entity, self.record_id)
            deleted = True
        except CrmNotFoundError:
            if self.must_exist:
                raise
            deleted = False
        return self.summary(entity=self.entity, id=self.record_id, deleted=deleted)


def _key_value(value: Any) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value[0].get("value")
    return value


class PipedriveUpsertOperator(_PipedriveOperator):
    """Create or update records from rows, keyed by a standard field or a custom field by name.

    Keys are normalised once (emails trimmed and lower-cased, text trimmed). A new key is created under
    a per-key claim in the connection's rate-limit store (file or Redis), so concurrent upserts of the
    same keys, in any process or machine sharing that store, create each record once; a create whose
    answer was lost is looked up by its key before it is sent again.

    :param entity: deals, persons, organizations, products, leads...
    :param rows: a list of dicts, an XCom (templated), or a JSON Lines / CSV file.
    :param key_field: the field identifying a record (``email``, ``name``, or a custom field's name).
    :param rejects_path: JSON Lines file for failed rows with the error.
    :param max_failure_ratio: fail the task past this fraction of failed rows (0: any failure).
    :param lookup: how existing records are found. ``search``: one search per row (always current;
        searches are limited to 10 per 2 s, so at most 5 rows a second). ``index``: list the entity
        once (500 records a call) and match locally, then one write per new or changed row; records
        someone else creates while the task runs are not seen. ``auto`` (default): ``index`` from
        ``index_from_rows`` rows up, else ``search``.
    :param index_from_rows: the row count from which ``auto`` indexes.
    :param pipedrive_conn_id: the Pipedrive connection.
    """

    template_fields: Sequence[str] = ("entity", "rows", "key_field", "rejects_path")
    operator_extra_links = (PipedriveListLink(),)

    def __init__(self, *, entity: str, rows: Any, key_field: str, rejects_path: str | ObjectStoragePath | None = None,
                 max_failure_ratio: float = 0.0, lookup: str = "auto", index_from_rows: int = 200,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if lookup not in ("auto", "search", "index"):
            raise CrmInputError(f"lookup must be auto, search or index, not {lookup!r}")
        self.entity = entity
        self.rows = rows
        self.key_field = key_field
        self.rejects_path = rejects_path
        self.max_failure_ratio = max_failure_ratio
        self.lookup = lookup
        self.index_from_rows = index_from_rows
        self._index: dict[str, dict[str, Any]] | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        entity_info(self.entity)
        push_link(context, PipedriveListLink.xcom_key, self.hook.list_url(self.entity))
        report = UpsertReport(self.rejects_path, task_label=f"{self.entity} upsert")
        rows = list(read_rows(self.rows))
        if self.lookup == "index" or (self.lookup == "auto" and len(rows) >= self.index_from_rows):
            self._index = self.hook.index_by(self.entity, self.key_field)
            self.log.info("Indexed %d %s by %s for %d rows", len(self._index), self.entity, self.key_field, len(rows))
        limiter = self.hook.limiter
        self.log.info("Upserting %d rows into %s keyed by %r (lookup: %s); rate limit: %s", len(rows), self.entity,
                      self.key_field, "index" if self._index is not None else "search", describe_limits(limiter))
        progress = Progress(self.log, "rows", total=len(rows), stats=limiter.stats, detail=report.describe)
        for index, row in enumerate(rows, start=1):
            try:
                outcome, record_id = self._upsert_row(row)
                report.record(outcome, record_id)
            except CrmError as err:
                report.reject(index, row, err)
            progress.add()
        progress.done(report.describe())
        summary = self.summary(entity=self.entity, **report.summary())
        self.log.info("Summary:\n%s", summary_table(summary))
        report.check_threshold(self.max_failure_ratio)
        return summary

    def _upsert_row(self, row: dict[str, Any]) -> tuple[str, Any]:
        # the key as Pipedrive keeps it (emails lower-cased, text trimmed), once: the lookup, the index,
        # the create's own lookup and the record written all use this value
        key_value = normalise_key(self.key_field, _key_value(row.get(self.key_field)))
        if key_value in (None, ""):
            raise CrmInputError(f"key field {self.key_field!r} is empty")
        data = {k: v for k, v in row.items() if v is not None}
        if isinstance(data.get(self.key_field), str):
            data[self.key_field] = key_value
        if self.entity == "persons" and isinstance(data.get("email"), str):
            data["emails"] = [{"value": data.pop("email"), "primary": True, "label": "work"}]
        if self.entity == "persons" and isinstance(data.get("phone"), str):
            data["phones"] = [{"value": data.pop("phone"), "primary": True, "label": "work"}]
        body = self.hook.encode_record(self.entity, data)  # validates names before any write
        existing = self._index.get(match_key(key_value)) if self._index is not None else None
        if existing is None:
            # Under the key's claim (shared with every process using this store): the record another
            # writer created meanwhile, else a fresh search (search lookup), else a create.
            existing, created = create_keyed(self.hook, self.entity, self.key_field, key_value, data,
                                             trust_absent=self._index is not None)
            self._remember(existing, key_value)
            if created:
                return "created", existing["id"]
        if _unchanged(existing, body):
            return "unchanged", existing["id"]
        updated = self.hook.update(self.entity, existing["id"], data)
        self._remember(updated if isinstance(updated, dict) and updated.get("id") else existing, key_value)
        return "updated", existing["id"]

    def _remember(self, record: dict[str, Any], key_value: Any) -> None:
        """Keep the index current, so a later row with the same key updates instead of creating."""
        if self._index is not None:
            self._index[match_key(key_value)] = record


def _unchanged(existing: dict[str, Any], body: dict[str, Any]) -> bool:
    for key, value in body.items():
        if key == "custom_fields":
            current = existing.get("custom_fields") or {}
            if any(current.get(k) != v for k, v in value.items()):
                return False
        elif key in ("emails", "phones"):
            have = {str(e.get("value")).lower() for e in existing.get(key) or []}
            if not {str(e.get("value")).lower() for e in value} <= have:
                return False
        elif existing.get(key) != value:
            return False
    return True


def _parse_update_time(value: Any) -> datetime | None:
    """``update_time`` in v2 (RFC 3339), v1 (``YYYY-MM-DD HH:MM:SS`` UTC) or leads (with milliseconds)."""
    if not value:
        return None
    text = str(value).strip().replace(" ", "T").replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _updated_at_or_after(record: dict[str, Any], until: datetime) -> bool:
    moment = _parse_update_time(record.get("update_time"))
    return moment is not None and moment.replace(microsecond=0) >= until


def _unique_ids(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Offset pages can shift when a record enters the filtered set mid-export: never emit one twice."""
    seen: set[Any] = set()
    for record in records:
        if record.get("id") in seen:
            continue
        seen.add(record.get("id"))
        yield record


def _v1_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PipedriveExportOperator(_PipedriveOperator):
    """Export any entity to JSON Lines or CSV, streamed and written atomically.

    Custom fields come out under their names and option ids as labels. Incremental: each run reads
    the records updated since the last successful export of this task ended (its watermark), or
    exactly the run's data interval when it has a real one; see docs/incremental-exports.md. The
    range is half-open in whole seconds (``updated_since`` inclusive, ``updated_until`` exclusive), so
    consecutive runs neither miss nor repeat a record. Deleted deals can be added as tombstones.

    :param entity: deals, persons, organizations, activities, products, leads, notes, pipelines, stages.
    :param path: target file (ObjectStoragePath or URL). Give each run its own file (for example
        ``.../{{ dag_run.run_after | ts_nodash }}.jsonl``): a run that overwrote an earlier run's file
        would lose what that run exported.
    :param fmt: ``jsonl`` or ``csv``.
    :param full: export everything (the watermark then moves to the end of this export).
    :param start: where the first export of this task starts when it has no watermark yet (ISO date
        or time); by default the first export reads everything.
    :param settle_seconds: the range ends this many seconds before now, so a record written in the
        last moments is read by the next run rather than missed.
    :param watermark_key: the Airflow Variable holding the watermark (default
        ``crm_export_watermark.<dag_id>.<task_id>``).
    :param include_deleted: add deals deleted in the range as ``{"id", "_deleted": true, ...}`` rows.
    :param include_archived: add archived deals (``GET /api/v2/deals`` leaves them out) with
        ``"_archived": true``; without it a deal archived in the range does not appear in the export.
    :param rename_custom_fields: custom fields by name (True) or by hash key.
    :param option_labels: option ids as labels.
    :param slices: fetch the range as this many time slices in parallel; when one finishes early it
        takes over half of the busiest one's remainder, so uneven ranges keep every slice busy
        (v2 entities with ``updated_until``; others split evenly).
    :param fieldnames: CSV: exactly these columns. By default the header holds the entity's declared
        fields (custom ones by name), then any other key a record has, tombstone columns included.
    :param pipedrive_conn_id: the Pipedrive connection.
    """

    template_fields: Sequence[str] = ("entity", "path", "fmt", "start", "watermark_key")
    operator_extra_links = (PipedriveListLink(),)

    def __init__(self, *, entity: str, path: str | ObjectStoragePath, fmt: str = "jsonl", full: bool = False,
                 start: str | datetime | None = None, settle_seconds: float = 10.0, watermark_key: str | None = None,
                 include_deleted: bool = False, include_archived: bool = False, rename_custom_fields: bool = True,
                 option_labels: bool = True,
                 slices: int = 1, fieldnames: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entity = entity
        self.path = path
        self.fmt = fmt
        self.full = full
        self.start = start
        self.settle_seconds = settle_seconds
        self.watermark_key = watermark_key
        self.include_deleted = include_deleted
        self.include_archived = include_archived
        self.rename_custom_fields = rename_custom_fields
        self.option_labels = option_labels
        self.slices = slices
        self.fieldnames = fieldnames

    @tuned_for_export
    def execute(self, context: Any) -> dict[str, Any]:
        info = entity_info(self.entity)
        if (self.include_deleted or self.include_archived) and self.entity != "deals":
            raise CrmInputError(f"include_deleted / include_archived apply to deals only, not {self.entity}")
        push_link(context, PipedriveListLink.xcom_key, self.hook.list_url(self.entity))
        window, watermark = plan_export(self, context, full=self.full, incremental=info.incremental,
                                        start=self.start, settle_seconds=self.settle_seconds,
                                        watermark_key=self.watermark_key)
        start, end = window.start, window.end
        if end is not None and end > datetime.now(timezone.utc):
            # records updated between this export and `end` fall in this interval, not the next one
            self.log.warning("Data interval ends in the future (%s): records updated after this run but before "
                             "then will not be exported by any run; schedule exports after their interval", end)
        limiter = self.hook.limiter
        self.log.info("Exporting %s%s%s to %s (%s), %d slice(s); rate limit: %s", self.entity,
                      " with deleted" if self.include_deleted else "", " and archived" if self.include_archived else "",
                      self.path, self.fmt, max(1, self.slices), describe_limits(limiter))
        progress = Progress(self.log, self.entity, stats=limiter.stats)
        counts = {"records": 0, "deleted": 0, "archived": 0}
        self._slicing: dict[str, int] = {}
        # the field definitions load while the first pages are on their way, not before them
        definitions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-fields")
        fmap_future = (definitions.submit(self.hook.field_map, self.entity)
                       if self.rename_custom_fields and info.fields_endpoint and not window.empty else None)
        fmap: FieldMap | None = None
        columns = None
        if self.fmt == "csv" and not self.fieldnames:
            # a stable CSV header: the entity's declared fields first (custom ones by name)
            fmap = fmap_future.result() if fmap_future is not None else None
            columns = _declared_columns(fmap, self.rename_custom_fields,
                                        self.include_deleted, self.include_archived)
        with open_export_writer(self.path, self.fmt, fieldnames=self.fieldnames, columns=columns,
                                owner=task_label(self, context)) as writer, definitions:
            for record in self._records(start, end) if not window.empty else ():
                if fmap_future is not None and fmap is None:
                    fmap = fmap_future.result()
                deleted = bool(record.get("is_deleted")) or record.get("status") == "deleted"
                archived = bool(record.get("is_archived"))
                if fmap is not None:
                    record = fmap.rename_record(record, labels=self.option_labels)
                if deleted:
                    record["_deleted"] = True
                    counts["deleted"] += 1
                elif archived and self.include_archived:
                    record["_archived"] = True
                    counts["archived"] += 1
                writer.write(record)
                progress.add()
        counts["records"] = writer.count
        progress.done(f"written to {self.path}")
        commit_export(self, context, watermark, window, records=writer.count, path=str(self.path))
        if self._slicing.get("splits"):
            self.log.info("Slices rebalanced %d times while running", self._slicing["splits"])
        emit_asset_event(context, self.outlets, {**counts, "entity": self.entity, "path": str(self.path),
                                                 "range": window.as_dict()})
        summary = self.summary(entity=self.entity, path=str(self.path), **counts, range=window.as_dict())
        self.log.info("Summary:\n%s", summary_table(summary))
        return summary

    def _filters(self, start: datetime | None, end: datetime | None, status: str | None = None) -> dict[str, Any]:
        info = entity_info(self.entity)
        filters: dict[str, Any] = {}
        if start is not None:
            filters["updated_since"] = _rfc3339(start) if info.version == "v2" else _v1_time(start)
        if end is not None and info.server_side_until:
            filters["updated_until"] = _rfc3339(end)
        if "sort_by" in info.filters:
            filters.update({"sort_by": "update_time", "sort_direction": "asc"})
        elif "sort" in info.filters:
            # offset pages in id order: a record updated while we page stays where it was
            filters["sort"] = "id ASC"
        if status:
            filters["status"] = status
        return filters

    def _slice_records(self, start: datetime | None, end: datetime | None) -> Iterator[dict[str, Any]]:
        records = self._fetch(start, end)
        info = entity_info(self.entity)
        if info.pagination == "offset":
            records = _unique_ids(records)
        if end is not None and not info.server_side_until:
            # the API takes updated_since only (v1 leads and notes, v2 products): apply the half-open end
            # here, at the same second precision, or a record updated after `end` would come out twice
            until = end.astimezone(timezone.utc).replace(microsecond=0)
            records = (r for r in records if not _updated_at_or_after(r, until))
        yield from records

    def _fetch(self, start: datetime | None, end: datetime | None) -> Iterator[dict[str, Any]]:
        yield from self.hook.iter_records(self.entity, **self._filters(start, end))
        if self.include_archived:
            yield from self.hook.iter_records(self.entity, archived=True, **self._filters(start, end))
        if self.include_deleted:
            yield from self.hook.iter_records(self.entity, **self._filters(start, end, "deleted"))

    def _records(self, start: datetime | None, end: datetime | None) -> Iterator[dict[str, Any]]:
        if self.slices <= 1 or start is None or end is None:
            yield from self._slice_records(start, end)
            return
        info = entity_info(self.entity)
        if info.server_side_until and "sort_by" in info.filters:
            yield from self._balanced_records(start, end)
            return
        step = (end - start) / self.slices
        bounds = [(start + step * i, start + step * (i + 1) if i < self.slices - 1 else end)
                  for i in range(self.slices)]
        # whole seconds, so slice edges line up with the API's second-precision filters
        bounds = [(a.replace(microsecond=0), b.replace(microsecond=0) if b != end else b) for a, b in bounds]
        sources = [lambda a=a, b=b: self._slice_records(a, b) for a, b in bounds if b > a]
        yield from merge_parallel(sources, self.slices, max_buffered=2000)


    def _balanced_records(self, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
        """The interval in ``slices`` parallel time slices, rebalanced as they run (common/slicing.py)."""
        kinds = ["live"] + ["archived"] * self.include_archived + ["deleted"] * self.include_deleted
        first, last = int(start.timestamp()), int(end.timestamp())
        step = (last - first) / self.slices
        cuts = [first + round(step * i) for i in range(self.slices)] + [last]
        slices = [Slice(kind, a, b) for kind in kinds for a, b in itertools.pairwise(cuts) if b > a]

        def fetch(kind: str, a: int, b: int) -> Iterator[dict[str, Any]]:
            filters = self._filters(_from_epoch(a), _from_epoch(b), "deleted" if kind == "deleted" else None)
            return self.hook.iter_records(self.entity, archived=kind == "archived", **filters)

        yield from fetch_balanced(fetch, _update_epoch, slices, self.slices, min_split_records=2 * MAX_PAGE,
                                  stats=self._slicing)


def _declared_columns(fmap: FieldMap | None, by_name: bool, deleted: bool, archived: bool) -> list[str]:
    columns = ["id"]
    for definition in fmap.definitions if fmap is not None else []:
        custom = definition.get("key") in fmap.by_key  # type: ignore[union-attr]
        name = str(definition["name"] if custom and by_name else definition.get("key"))
        if name not in columns:
            columns.append(name)
    return columns + ["_deleted"] * deleted + ["_archived"] * archived


def _from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _update_epoch(record: dict[str, Any]) -> int | None:
    moment = _parse_update_time(record.get("update_time"))
    return None if moment is None else int(moment.timestamp())


class PipedriveMailExportOperator(_PipedriveOperator):
    """Export the mail threads of a folder, each with its messages, to JSON Lines (streamed, atomic).

    :param folder: inbox, drafts, sent or archive.
    :param path: target file.
    :param pipedrive_conn_id: the Pipedrive connection.
    """

    template_fields: Sequence[str] = ("folder", "path")

    def __init__(self, *, folder: str = "inbox", path: str | ObjectStoragePath, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder
        self.path = path

    @tuned_for_export
    def execute(self, context: Any) -> dict[str, Any]:
        messages = 0
        with open_export_writer(self.path, "jsonl", owner=task_label(self, context)) as writer:
            for thread in self.hook.iter_mail_threads(self.folder):
                thread_messages = self.hook.thread_messages(thread["id"])
                messages += len(thread_messages)
                writer.write({**thread, "messages": thread_messages})
        emit_asset_event(context, self.outlets, {"threads": writer.count, "messages": messages})
        return self.summary(folder=self.folder, path=str(self.path), records=writer.count, messages=messages)


__all__ = [
    "PipedriveCreateOperator",
    "PipedriveDeleteOperator",
    "PipedriveExportOperator",
    "PipedriveMailExportOperator",
    "PipedriveUpdateOperator",
    "PipedriveUpsertOperator",
]
