"""Pipefy operators: card and table-record actions, bulk upsert, streaming exports."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import cached_property, partial
from typing import Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_crm.clients.pipefy import rows as export_rows
from airflow_provider_crm.clients.pipefy.lookup import check_lookup, plan_lookup
from airflow_provider_crm.clients.pipefy.pagination import pages_for
from airflow_provider_crm.clients.pipefy.upsert import PipefyUpsertSteps
from airflow_provider_crm.clients.pipefy.writes import create_card_keyed, create_record_keyed
from airflow_provider_crm.common.context import emit_asset_event, push_link, task_label
from airflow_provider_crm.common.errors import CrmNotFoundError, CrmPermissionError
from airflow_provider_crm.common.export import open_export_writer, tuned_for_export
from airflow_provider_crm.common.fanin import merge_parallel
from airflow_provider_crm.common.progress import Progress, describe_limits, summary_table
from airflow_provider_crm.common.rows import counted_rows
from airflow_provider_crm.common.upsert import UpsertReport
from airflow_provider_crm.common.upsert_loop import run_upsert, upsert_workers
from airflow_provider_crm.common.watermark import commit_export, plan_export
from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.links import PipefyCardLink, PipefyPipeLink, PipefyTableLink


class _PipefyOperator(BaseOperator):
    """Base: owns the hook and adds the rate-limit stats to every summary."""

    def __init__(self, *, pipefy_conn_id: str = PipefyHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipefy_conn_id = pipefy_conn_id

    @cached_property
    def hook(self) -> PipefyHook:
        return PipefyHook(pipefy_conn_id=self.pipefy_conn_id)

    def summary(self, **values: Any) -> dict[str, Any]:
        return {**values, "rate_limit": self.hook.limiter.stats.as_dict()}


class PipefyCreateCardOperator(_PipefyOperator):
    """Create a card in a pipe.

    :param pipe_id: the pipe.
    :param fields: field values by field id or label; Python values (dates, numbers, lists) are
        converted to Pipefy's formats by field type.
    :param title: card title.
    :param phase_id: phase to create the card in (default: the pipe's first phase).
    :param key_field: a field (id or label) whose value identifies the card: if a card with that
        value exists it is returned instead of creating another, so an Airflow retry never
        creates a duplicate.
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("pipe_id", "fields", "title", "phase_id", "key_field")
    operator_extra_links = (PipefyCardLink(),)

    def __init__(self, *, pipe_id: str | int, fields: dict[str, Any] | None = None, title: str | None = None,
                 phase_id: str | int | None = None, key_field: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipe_id = pipe_id
        self.fields = fields or {}
        self.title = title
        self.phase_id = phase_id
        self.key_field = key_field

    def execute(self, context: Any) -> dict[str, Any]:
        card, created = create_card_keyed(self.hook.client, self.pipe_id, title=self.title, fields=self.fields,
                                          phase_id=self.phase_id, key_field=self.key_field)
        url = self.hook.card_url(card["id"])
        push_link(context, PipefyCardLink.xcom_key, url)
        return self.summary(id=str(card["id"]), created=created, url=url)


class PipefyUpdateCardOperator(_PipefyOperator):
    """Update a card: title, due date, assignees, labels and custom fields.

    :param card_id: the card.
    :param fields: custom field values by id or label (sent through updateFieldsValues, 30 per call).
    :param attributes: card-level attributes for updateCard (title, due_date, assignee_ids, label_ids).
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("card_id", "fields", "attributes")
    operator_extra_links = (PipefyCardLink(),)

    def __init__(self, *, card_id: str | int, fields: dict[str, Any] | None = None,
                 attributes: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.card_id = card_id
        self.fields = fields or {}
        self.attributes = attributes or {}

    def execute(self, context: Any) -> dict[str, Any]:
        self.hook.update_card(self.card_id, fields=self.fields, **self.attributes)
        url = self.hook.card_url(self.card_id)
        push_link(context, PipefyCardLink.xcom_key, url)
        return self.summary(id=str(self.card_id), updated_fields=sorted(self.fields), url=url)


class PipefyMoveCardOperator(_PipefyOperator):
    """Move a card to a phase, given by id or by name.

    :param card_id: the card.
    :param phase: destination phase id or name.
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("card_id", "phase")
    operator_extra_links = (PipefyCardLink(),)

    def __init__(self, *, card_id: str | int, phase: str | int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.card_id = card_id
        self.phase = phase

    def execute(self, context: Any) -> dict[str, Any]:
        card = self.hook.get_card(self.card_id)
        target = self.hook.resolve_phase(card["pipe"]["id"], self.phase)
        if str(card["current_phase"]["id"]) == str(target["id"]):
            moved = False  # a retry after a move that landed: nothing to do
        else:
            self.hook.move_card(self.card_id, target["id"])
            moved = True
            self.log.info("Moved card %s to phase %r", self.card_id, target["name"])
        push_link(context, PipefyCardLink.xcom_key, self.hook.card_url(self.card_id))
        return self.summary(id=str(self.card_id), phase=target["name"], moved=moved)


class PipefyDeleteCardOperator(_PipefyOperator):
    """Delete a card. A card already gone counts as deleted unless ``must_exist``.

    The card is read first, so the extra link can point at its pipe and a card that is already gone
    (Pipefy answers not-found or, for a deleted card, permission denied) is told apart from a delete.

    :param card_id: the card.
    :param must_exist: fail when the card does not exist.
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("card_id",)
    operator_extra_links = (PipefyPipeLink(),)

    def __init__(self, *, card_id: str | int, must_exist: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.card_id = card_id
        self.must_exist = must_exist

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            card = self.hook.get_card(self.card_id)
        except (CrmNotFoundError, CrmPermissionError) as err:
            if self.must_exist:
                raise
            self.log.info("Card %s is already gone (%s): nothing to delete", self.card_id, err.api_message)
            return self.summary(id=str(self.card_id), deleted=False)
        pipe_id = (card.get("pipe") or {}).get("id")
        if pipe_id:
            push_link(context, PipefyPipeLink.xcom_key, self.hook.pipe_url(pipe_id))
        try:
            deleted = self.hook.delete_card(self.card_id)
        except CrmNotFoundError:  # deleted between the read and the delete (or by a lost first answer)
            deleted = False
        self.log.info("Card %s %s", self.card_id, "deleted" if deleted else "was already gone")
        return self.summary(id=str(self.card_id), deleted=deleted, pipe_id=str(pipe_id) if pipe_id else None)


class PipefyCreateTableRecordOperator(_PipefyOperator):
    """Create a record in a Pipefy database table.

    :param table_id: the table.
    :param fields: values by field id or label.
    :param title: record title.
    :param key_field: a field (id or label) whose value identifies the record: if a record with that
        value exists it is returned instead of creating another, so an Airflow retry never
        creates a duplicate.
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("table_id", "fields", "title", "key_field")
    operator_extra_links = (PipefyTableLink(),)

    def __init__(self, *, table_id: str | int, fields: dict[str, Any], title: str | None = None,
                 key_field: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table_id = table_id
        self.fields = fields
        self.title = title
        self.key_field = key_field

    def execute(self, context: Any) -> dict[str, Any]:
        record, created = create_record_keyed(self.hook.client, self.table_id, title=self.title, fields=self.fields,
                                              key_field=self.key_field)
        push_link(context, PipefyTableLink.xcom_key, self.hook.table_url(self.table_id))
        return self.summary(id=str(record["id"]), table_id=str(self.table_id), created=created)


class PipefyUpdateTableRecordOperator(_PipefyOperator):
    """Update a database-table record: title and field values by id or label.

    :param table_id: the table (to resolve field labels).
    :param record_id: the record.
    :param fields: values by field id or label.
    :param title: new title.
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("table_id", "record_id", "fields", "title")
    operator_extra_links = (PipefyTableLink(),)

    def __init__(self, *, table_id: str | int, record_id: str | int, fields: dict[str, Any] | None = None,
                 title: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table_id = table_id
        self.record_id = record_id
        self.fields = fields or {}
        self.title = title

    def execute(self, context: Any) -> dict[str, Any]:
        attributes = {"title": self.title} if self.title is not None else {}
        self.hook.update_table_record(self.record_id, table_id=self.table_id, fields=self.fields, **attributes)
        push_link(context, PipefyTableLink.xcom_key, self.hook.table_url(self.table_id))
        return self.summary(id=str(self.record_id), table_id=str(self.table_id), updated_fields=sorted(self.fields))


class PipefyUpsertCardsOperator(_PipefyOperator):
    """Create or update cards from rows, keyed by a field; failed rows go to a rejects file.

    :param pipe_id: the pipe.
    :param rows: a list of dicts, an XCom (templated), or a JSON Lines / CSV file (ObjectStoragePath or URL).
    :param key_field: the field (id or label) whose value identifies a card; its column must be in every row.
    :param field_map: row column -> field id or label; by default columns are used as field ids or labels.
    :param title_column: row column to use as the card title (also written to the field of that
        name or label, if the pipe has one).
    :param phase: phase (id or name) to move created or updated cards to.
    :param rejects_path: JSON Lines file for rows that failed, with the error.
    :param max_failure_ratio: fail the task when more than this fraction of rows failed (0: any failure).
    :param max_workers: most rows written at once (never two with the same key). Default: enough to
        keep the plan's request window busy, at most 32; the rate limiter holds the rate either way.
    :param lookup: how a row's card is found. ``search``: one findCards per row (always current).
        ``index``: the pipe's cards read once (50 a page by default), matched in memory as findCards does;
        cards others create meanwhile are not seen. ``auto`` (default): ``index`` when reading the pipe
        takes fewer requests than one findCards per row and the key is a text field, else ``search``.
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("pipe_id", "rows", "key_field", "field_map", "phase", "rejects_path")
    operator_extra_links = (PipefyPipeLink(),)

    def __init__(self, *, pipe_id: str | int, rows: Any, key_field: str, field_map: dict[str, str] | None = None,
                 title_column: str | None = None, phase: str | int | None = None,
                 rejects_path: str | ObjectStoragePath | None = None, max_failure_ratio: float = 0.0,
                 max_workers: int | None = None, lookup: str = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_workers, self.lookup = max_workers, check_lookup(lookup)
        self.pipe_id, self.rows, self.key_field, self.field_map = pipe_id, rows, key_field, field_map or {}
        self.title_column, self.phase = title_column, phase
        self.rejects_path, self.max_failure_ratio = rejects_path, max_failure_ratio

    def execute(self, context: Any) -> dict[str, Any]:
        hook = self.hook
        meta = hook.pipe_fields(self.pipe_id)
        key = hook.resolve_field(meta, self.key_field, f"pipe {self.pipe_id}")
        target = hook.resolve_phase(self.pipe_id, self.phase) if self.phase is not None else None
        key_column = next((c for c, f in self.field_map.items() if f == self.key_field), self.key_field)
        rows, count = counted_rows(self.rows)
        plan = plan_lookup(hook.client, self.pipe_id, key, self.lookup, count)
        estimate = plan.requests + count * (2 if target is not None else 1)  # finding, a write a row, moves
        workers = upsert_workers(hook.limiter, self.max_workers, rows=count)
        self.log.info("Upserting %d rows into pipe %s keyed by %r, %d at a time, %s: at most about %d API calls; "
                      "rate limit: %s", count, self.pipe_id, key["label"], workers, plan.describe(), estimate,
                      describe_limits(hook.limiter))
        hook.limiter.check_quota(estimate)
        index = plan.read_index(hook.client, self.pipe_id, key)
        report = UpsertReport(self.rejects_path, task_label=f"upsert into pipe {self.pipe_id}")
        progress = Progress(self.log, "rows", total=count, stats=hook.limiter.stats, detail=report.describe)
        steps = PipefyUpsertSteps(hook.client, self.pipe_id, key, key_column, meta, target,
                                  field_map=self.field_map, title_column=self.title_column, index=index)
        run_upsert(rows, steps, report, progress, workers=workers)
        progress.done(report.describe())
        push_link(context, PipefyPipeLink.xcom_key, hook.pipe_url(self.pipe_id))
        summary = self.summary(pipe_id=str(self.pipe_id), **report.summary(), parallel=workers, lookup=plan.lookup)
        self.log.info("Summary:\n%s", summary_table(summary))
        report.check_threshold(self.max_failure_ratio)
        return summary


class _PipefyExportOperator(_PipefyOperator):
    """Base of the exports: the range to read (watermark or real data interval), the file, the summary.

    :param path: target file (ObjectStoragePath or URL: local, s3://, gs://, ...); give each run its
        own file, e.g. ``.../{{ dag_run.run_after | ts_nodash }}.jsonl``.
    :param fmt: ``jsonl`` or ``csv``.
    :param full: export everything (the watermark then moves to the end of this export).
    :param start: where the first export of this task starts when it has no watermark yet (ISO date
        or time); by default the first export reads everything.
    :param settle_seconds: the range ends this many seconds before now, so a record written in the last
        moments is read by the next run rather than missed.
    :param watermark_key: the Airflow Variable holding the watermark (default
        ``crm_export_watermark.<dag_id>.<task_id>``).
    :param page_size: nodes asked for per page (default: the connection's ``page_size``, else 50);
        a page served shorter is never taken for the last one.
    """

    def __init__(self, *, path: str | ObjectStoragePath, fmt: str = "jsonl", full: bool = False,
                 start: str | datetime | None = None, settle_seconds: float = 10.0,
                 watermark_key: str | None = None, page_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path, self.fmt, self.full, self.start = path, fmt, full, start
        self.settle_seconds, self.watermark_key, self.page_size = settle_seconds, watermark_key, page_size

    @cached_property
    def hook(self) -> PipefyHook:
        return PipefyHook(pipefy_conn_id=self.pipefy_conn_id, page_size=self.page_size)

    def plan(self, context: Any) -> tuple[Any, Any]:
        return plan_export(self, context, full=self.full, incremental=True, start=self.start,
                           settle_seconds=self.settle_seconds, watermark_key=self.watermark_key)

    def finish(self, context: Any, window: Any, watermark: Any, records: int, link: tuple[str, str],
               **ids: Any) -> dict[str, Any]:
        """Move the watermark, push the link and the asset event, log and return the summary."""
        commit_export(self, context, watermark, window, records=records, path=str(self.path))
        push_link(context, *link)
        emit_asset_event(context, self.outlets, {"records": records, "path": str(self.path), "range": window.as_dict()})
        summary = self.summary(**ids, records=records, path=str(self.path), range=window.as_dict())
        self.log.info("Summary:\n%s", summary_table(summary))
        return summary


class PipefyExportCardsOperator(_PipefyExportOperator):
    """Export the cards of a pipe (or some phases) to JSON Lines or CSV, streamed and written atomically.

    One row per card: card attributes, then each field by label and by id with the machine-readable
    value (array_value, datetime_value, date_value, float_value) and the display value as
    ``<field id>__display``. Incremental on ``updated_at``: each run reads the cards updated since the
    last successful export of this task ended (its watermark), or exactly the run's data interval
    when it has a real one; see docs/incremental-exports.md.

    :param pipe_id: the pipe.
    :param phases: phase ids or names to export (default: the whole pipe).
    :param max_workers: the most phases read in parallel. By default (None) the export chooses: a
        whole-pipe read (a first or full export) reads its phases side by side, as many at once as the
        plan's rate needs at the latency of the first request (at most 16); an incremental read of the
        whole pipe is one filtered stream of the changed cards.
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("pipe_id", "path", "phases", "fmt", "start", "watermark_key")
    operator_extra_links = (PipefyPipeLink(),)

    def __init__(self, *, pipe_id: str | int, phases: list[str | int] | None = None, max_workers: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipe_id = pipe_id
        self.phases = phases
        self.max_workers = max_workers
        self.parallel = 1  # phases read at once, chosen in execute

    @tuned_for_export
    def execute(self, context: Any) -> dict[str, Any]:
        hook = self.hook
        mark = hook.limiter.stats.answers_mark()
        pipe = hook.get_pipe(self.pipe_id)
        latency = hook.limiter.stats.latency_since(mark) or 0.0  # not the waits for the window
        window, watermark = self.plan(context)
        phase_list = [hook.resolve_phase(self.pipe_id, p) for p in self.phases] if self.phases else None
        if phase_list is None and window.start is None:
            # the whole pipe: its phases side by side page faster than one stream of allCards
            phase_list = [p for p in pipe.get("phases") or [] if p.get("cards_count") != 0]
        self.parallel = max(1, min(len(phase_list or [None]), hook.limiter.in_flight(latency, self.max_workers or 16)))
        cards_total = sum(p.get("cards_count") or 0 for p in (phase_list or pipe.get("phases") or []))
        counts = [p.get("cards_count") or 0 for p in phase_list] if phase_list else [cards_total]
        estimated_calls = sum(pages_for(n, hook.page_size) for n in counts)  # a phase pages on its own
        hook.limiter.check_quota(estimated_calls)
        self.log.info("Exporting pipe %s (%s) cards updated in %s to %s: at most %d cards in %d calls; rate "
                      "limit: %s", pipe["name"], self.pipe_id, window.describe(), self.path, cards_total,
                      estimated_calls, describe_limits(hook.limiter))
        header = export_rows.columns(export_rows.CARD_COLUMNS, hook.pipe_fields(self.pipe_id)) if self.fmt == "csv" else None
        # a whole-pipe read knows its total; an incremental one reads only the changed cards
        total = cards_total if window.start is None else None
        progress = Progress(self.log, "cards", total=total, stats=hook.limiter.stats)
        with open_export_writer(self.path, self.fmt, columns=header, owner=task_label(self, context)) as writer:
            for card in self._cards(phase_list, window.start, window.end) if not window.empty else ():
                writer.write(export_rows.card_row(card))
                progress.add()
        progress.done(f"written to {self.path}")
        return self.finish(context, window, watermark, writer.count,
                           (PipefyPipeLink.xcom_key, hook.pipe_url(self.pipe_id)), pipe_id=str(self.pipe_id),
                           parallel=self.parallel)

    def _cards(self, phases: list[dict[str, Any]] | None, start: datetime | None,
               end: datetime | None) -> Iterator[dict[str, Any]]:
        if not phases:
            yield from self.hook.iter_pipe_cards(self.pipe_id, start, end)
            return

        def phase_cards(phase_id: str) -> Iterator[dict[str, Any]]:
            return (card for card in self.hook.iter_phase_cards(phase_id) if export_rows.updated_within(card, start, end))

        # phases in parallel within the shared rate limit; memory stays flat (bounded buffer)
        yield from merge_parallel([partial(phase_cards, p["id"]) for p in phases], self.parallel, max_buffered=500)


class PipefyExportTableRecordsOperator(_PipefyExportOperator):
    """Export the records of a Pipefy database table to JSON Lines or CSV (streamed, atomic).

    One row per record: ``id``, ``title``, ``created_at``, ``updated_at``, then each field by label
    and by id with its machine-readable value, and ``<field id>__display`` with the display text.
    Incremental on ``updated_at`` like :class:`PipefyExportCardsOperator` (watermark or real data
    interval); Pipefy cannot filter records by date, so every page is read and filtered here.

    :param table_id: the table.
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("table_id", "path", "fmt", "start", "watermark_key")
    operator_extra_links = (PipefyTableLink(),)

    def __init__(self, *, table_id: str | int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table_id = table_id

    @tuned_for_export
    def execute(self, context: Any) -> dict[str, Any]:
        hook = self.hook
        table = hook.get_table(self.table_id)
        window, watermark = self.plan(context)
        total = table.get("table_records_count") or 0
        estimated_calls = pages_for(total, hook.page_size)
        hook.limiter.check_quota(estimated_calls)
        self.log.info("Exporting table %s (%s) records updated in %s to %s: %d records to read in about %d calls; "
                      "rate limit: %s", table.get("name"), self.table_id, window.describe(), self.path, total,
                      estimated_calls, describe_limits(hook.limiter))
        progress = Progress(self.log, "records read", total=total, stats=hook.limiter.stats)
        header = export_rows.columns(export_rows.RECORD_COLUMNS, table["table_fields"]) if self.fmt == "csv" else None
        with open_export_writer(self.path, self.fmt, columns=header, owner=task_label(self, context)) as writer:
            for record in hook.iter_table_records(self.table_id) if not window.empty else ():
                progress.add()
                if export_rows.updated_within(record, window.start, window.end):
                    writer.write(export_rows.record_row(record))
        progress.done(f"{writer.count:,} of them updated in the range, written to {self.path}")
        return self.finish(context, window, watermark, writer.count,
                           (PipefyTableLink.xcom_key, hook.table_url(self.table_id)), table_id=str(self.table_id))
