"""Pipedrive operators: entity create/update/delete, bulk upsert, streaming exports, mail export."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_crm.clients.pipedrive.entities import entity_info
from airflow_provider_crm.clients.pipedrive.export_lines import PageEncoder, spare_processes
from airflow_provider_crm.clients.pipedrive.exports import RangeReader, declared_columns, mark_page
from airflow_provider_crm.clients.pipedrive.fields import key_of
from airflow_provider_crm.clients.pipedrive.upsert import PipedriveUpsertSteps, create_keyed
from airflow_provider_crm.common.context import emit_asset_event, push_link, task_label
from airflow_provider_crm.common.errors import CrmInputError, CrmNotFoundError
from airflow_provider_crm.common.export import open_export_writer, tuned_for_export
from airflow_provider_crm.common.progress import Progress, describe_limits, summary_table
from airflow_provider_crm.common.rows import read_rows
from airflow_provider_crm.common.upsert import UpsertReport
from airflow_provider_crm.common.upsert_loop import run_upsert, upsert_workers
from airflow_provider_crm.common.watermark import ExportWindow, WatermarkStore, commit_export, plan_export
from airflow_provider_crm.hooks.pipedrive import PipedriveHook
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
            record, created = create_keyed(self.hook.client, self.hook.base_url, self.entity, self.key_field,
                                           key_value, self.data, trust_absent=False)
        else:
            record, created = self.hook.create(self.entity, self.data), True
        push_link(context, PipedriveRecordLink.xcom_key, self.hook.record_url(self.entity, record["id"]))
        return self.summary(entity=self.entity, id=record["id"], created=created)


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
    :param max_workers: most rows written at once (never two with the same key). Default: enough to
        keep the plan's write allowance busy, at most 32; the rate limiter holds the rate either way.
    :param pipedrive_conn_id: the Pipedrive connection.
    """

    template_fields: Sequence[str] = ("entity", "rows", "key_field", "rejects_path")
    operator_extra_links = (PipedriveListLink(),)

    def __init__(self, *, entity: str, rows: Any, key_field: str, rejects_path: str | ObjectStoragePath | None = None,
                 max_failure_ratio: float = 0.0, lookup: str = "auto", index_from_rows: int = 200,
                 max_workers: int | None = None, **kwargs: Any) -> None:
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
        self.max_workers = max_workers

    def execute(self, context: Any) -> dict[str, Any]:
        entity_info(self.entity)
        push_link(context, PipedriveListLink.xcom_key, self.hook.list_url(self.entity))
        report = UpsertReport(self.rejects_path, task_label=f"{self.entity} upsert")
        rows = list(read_rows(self.rows))
        index = None
        if self.lookup == "index" or (self.lookup == "auto" and len(rows) >= self.index_from_rows):
            index = self.hook.index_by(self.entity, self.key_field)
            self.log.info("Indexed %d %s by %s for %d rows", len(index), self.entity, self.key_field, len(rows))
        limiter = self.hook.limiter
        workers = upsert_workers(limiter, self.max_workers, rows=len(rows))
        self.log.info("Upserting %d rows into %s keyed by %r (lookup: %s), %d at a time; rate limit: %s", len(rows),
                      self.entity, self.key_field, "index" if index is not None else "search", workers,
                      describe_limits(limiter))
        progress = Progress(self.log, "rows", total=len(rows), stats=limiter.stats, detail=report.describe)
        run_upsert(rows, PipedriveUpsertSteps(self.hook.client, self.hook.base_url, self.entity, self.key_field, index),
                   report, progress,
                   workers=workers)
        progress.done(report.describe())
        summary = self.summary(entity=self.entity, **report.summary(), parallel=workers)
        self.log.info("Summary:\n%s", summary_table(summary))
        report.check_threshold(self.max_failure_ratio)
        return summary


# Readers at most. Each holds up to three pages (one in flight, one read ahead, one waiting for the
# writer), kept as the answers' JSON text (RawPage: 0.56 MB for 500 deals, 1.6 MB decoded). 200,000
# deals on Ultimate at 400 ms per answer, 2026-12-02 (docs/performance.md): 12 readers of decoded
# pages took 14.7 s at 182 MB; of JSON text, 20 took 10.8 s and 24 took 9.7 s, both at 187-189 MB
MAX_SLICES = 24
# Readers per request the plan's rate keeps in flight at the measured latency. A quarter more than the
# rate needs: the burst at the start goes in about a window, and at 100 ms Ultimate gets 8 readers,
# where 12 were no faster (7.7-8.3 s either way) and held 20 MB more
SLICE_HEADROOM = 1.25
# Pages are encoded in a worker process (clients/pipedrive/export_lines.py) where the plan allows at
# least this many requests a second: one process decodes about 50 pages of 500 deals a second beside its
# fetching threads, and a plan of 10 a second (Lite) leaves it idle most of the time
OFFLOAD_MIN_RATE = 30.0
# ... and the export needs no more readers than this. A forked worker holds about 37 MB of its own (the
# pages of the task's heap it writes to); with more readers the answers' latency, not the CPU, sets the
# pace (200,000 deals at 400 ms on Ultimate: 9.3 s with a worker, 9.7 s without), and the memory goes to
# the readers instead
OFFLOAD_MAX_READERS = 12


class PipedriveExportOperator(_PipedriveOperator):
    """Export any entity to JSON Lines or CSV, streamed and written atomically.

    Custom fields come out under their names and option ids as labels. Incremental: each run reads
    the records updated since the last successful export of this task ended (its watermark), or
    exactly the run's data interval when it has a real one; see docs/incremental-exports.md. The
    range is half-open in whole seconds (``updated_since`` inclusive, ``updated_until`` exclusive), so
    consecutive runs neither miss nor repeat a record. Deleted deals can be added as tombstones.

    A JSON Lines export of a v2 entity on a plan of 30 requests a second or more (Premium, Ultimate,
    OAuth apps) decodes, renames and encodes its pages in a worker process forked from the task (at most
    two, one core left for fetching) where the machine has a core to spare, the task's process may have
    children (not in a Celery prefork worker) and the answers are quick enough for 12 readers; elsewhere
    in the task's own process. See docs/performance.md.

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
    :param slices: time slices read in parallel. By default (None) the export chooses: it measures
        the API's latency with one request and keeps enough requests in flight for the plan's rate
        (at most 24), full exports included; the rate limiter holds the pace either way. A number
        reads that many slices.
        A slice that finishes early takes over half of the busiest one's remainder (v2 entities with
        ``updated_until``; other entities are read as one stream unless ``slices`` asks for an even
        split of an incremental range).
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
                 slices: int | None = None, fieldnames: list[str] | None = None, **kwargs: Any) -> None:
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
        end = window.end
        if end is not None and end > datetime.now(timezone.utc):
            # records updated between this export and `end` fall in this interval, not the next one
            self.log.warning("Data interval ends in the future (%s): records updated after this run but before "
                             "then will not be exported by any run; schedule exports after their interval", end)
        limiter = self.hook.limiter
        reader = RangeReader(self.hook.client, self.entity, include_archived=self.include_archived,
                             include_deleted=self.include_deleted, slices=self.slices or 1, shallow=True)
        start = window.start
        if not window.empty and self.slices is None:
            # as many requests in flight as the plan's rate needs at the latency just measured
            start, reader.slices = reader.plan(
                start, end, lambda latency: limiter.in_flight(latency, MAX_SLICES, headroom=SLICE_HEADROOM))
        # worker processes are forked here: after the plan's requests, before any thread of the export
        # starts (clients/pipedrive/export_lines.py); only pages kept as JSON text go to them
        rate = limiter.rate("read")  # None: no window limits reads, the fastest plan of all
        offload = (self.fmt == "jsonl" and not window.empty and reader.reads_raw_pages(start, end)
                   and (rate is None or rate >= OFFLOAD_MIN_RATE) and reader.slices <= OFFLOAD_MAX_READERS)
        with PageEncoder(spare_processes() if offload else 0, labels=self.option_labels,
                         archived_too=self.include_archived) as encoder:
            return self._export(context, window, watermark, reader, start, encoder)

    def _export(self, context: Any, window: ExportWindow, watermark: WatermarkStore, reader: RangeReader,
                start: datetime | None, encoder: PageEncoder) -> dict[str, Any]:
        info = entity_info(self.entity)
        end, limiter = window.end, self.hook.limiter
        self.log.info("Exporting %s%s%s to %s (%s), %d slice(s)%s; rate limit: %s", self.entity,
                      " with deleted" if self.include_deleted else "", " and archived" if self.include_archived else "",
                      self.path, self.fmt, reader.slices, " (chosen for the plan's rate)" if self.slices is None else "",
                      describe_limits(limiter))
        progress = Progress(self.log, self.entity, stats=limiter.stats)
        counts = {"records": 0, "deleted": 0, "archived": 0}
        if self.rename_custom_fields and info.fields_endpoint and not window.empty:
            reader.load_fields()  # the field definitions load while the first pages are on their way
        columns = None
        if self.fmt == "csv" and not self.fieldnames:
            # a stable CSV header: the entity's declared fields first (custom ones by name)
            columns = declared_columns(reader.field_map(), self.rename_custom_fields, self.include_deleted,
                                       self.include_archived)
        with open_export_writer(self.path, self.fmt, fieldnames=self.fieldnames, columns=columns,
                                owner=task_label(self, context)) as writer, reader:
            if self.fmt == "jsonl":
                # pages as JSON Lines, encoded in a worker process where one was started
                pages = reader.raw_pages(start, end) if not window.empty else iter(())
                for block, written, kinds in encoder.lines(pages, reader.field_map):
                    writer.write_lines(block, written)
                    self._counted(counts, kinds, progress)
            else:
                for page in reader.pages(start, end) if not window.empty else ():
                    marked, kinds = mark_page(page, reader.field_map(), labels=self.option_labels,
                                              archived_too=self.include_archived)
                    writer.write_many(marked)
                    self._counted(counts, kinds, progress)
        counts["records"] = writer.count
        progress.done(f"written to {self.path}")
        commit_export(self, context, watermark, window, records=writer.count, path=str(self.path))
        if reader.stats.get("splits"):
            self.log.info("Slices rebalanced %d times while running", reader.stats["splits"])
        emit_asset_event(context, self.outlets, {**counts, "entity": self.entity, "path": str(self.path),
                                                 "range": window.as_dict()})
        summary = self.summary(entity=self.entity, path=str(self.path), **counts, range=window.as_dict(),
                               parallel=reader.slices)
        self.log.info("Summary:\n%s", summary_table(summary))
        return summary

    @staticmethod
    def _counted(counts: dict[str, int], kinds: dict[str, int], progress: Progress) -> None:
        counts["deleted"] += kinds["deleted"]
        counts["archived"] += kinds["archived"]
        progress.add(sum(kinds.values()))


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
