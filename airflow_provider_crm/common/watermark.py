"""Which time range an incremental export reads, and the watermark that carries it from run to run.

Airflow 3's default cron schedules give runs an empty data interval (start == end) and manual runs may
have none, so the interval alone cannot say what an export should read. Each export stream (one task
of one DAG) keeps a watermark instead: the exclusive end of the last range it exported successfully.
The next run reads ``[watermark, until)``, where ``until`` is the current second less a settling
delay. Both ends are whole seconds, the APIs' precision, and the end is exclusive, so a record
updated in the boundary second belongs to exactly one run: the later one.

The watermark is an Airflow Variable (``crm_export_watermark.<dag_id>.<task_id>``), visible and
editable under Admin > Variables: delete it to start over, set ``until`` to re-read from a moment.
It is written only after the export's file is in place, so a failed run moves nothing and the next
run re-reads its range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import pendulum

from airflow_provider_crm.common.context import task_label

log = logging.getLogger(__name__)

VARIABLE_PREFIX = "crm_export_watermark"

# The cases of docs/incremental-exports.md, in the order they are decided.
FULL = "full"  # full=True: everything up to now
DATA_INTERVAL = "data_interval"  # a run with a real (non-empty) data interval: exactly that interval
SINCE_WATERMARK = "since_watermark"  # where the last successful export ended, up to now
SINCE_START = "since_start"  # first run of the stream, from the `start` the user set
FIRST_FULL = "first_full"  # first run of the stream, nothing set: everything up to now
NOT_INCREMENTAL = "not_incremental"  # the API cannot filter this entity by update time


@dataclass(frozen=True)
class ExportWindow:
    """The half-open range ``[start, end)`` an export reads; ``None`` means unbounded on that side."""

    case: str
    start: datetime | None
    end: datetime | None
    reason: str

    @property
    def empty(self) -> bool:
        return self.start is not None and self.end is not None and self.start >= self.end

    @property
    def advances_watermark(self) -> bool:
        """Whether a successful export of this window moves the stream's watermark to ``end``."""
        return self.case != NOT_INCREMENTAL and self.end is not None

    def describe(self) -> str:
        start = _text(self.start) if self.start else "the beginning"
        end = _text(self.end) if self.end else "now"
        return f"[{start}, {end}) ({self.case}: {self.reason})"

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "start": _text(self.start) if self.start else None,
                "end": _text(self.end) if self.end else None}


def whole_second(moment: datetime) -> datetime:
    """``moment`` in UTC, truncated to the second (the APIs filter update times by whole seconds)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def _text(moment: datetime) -> str:
    return whole_second(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_moment(value: Any, what: str) -> datetime:
    """A datetime, or an ISO 8601 text (``2026-01-01``, ``2026-01-01T10:00:00Z``, a rendered template
    such as ``{{ data_interval_start }}``), as aware UTC; a text without an offset is UTC, not local time."""
    if isinstance(value, datetime):
        return whole_second(value)
    try:
        # pendulum, as Airflow's own templates render times: every ISO 8601 form, compact ones included
        moment = pendulum.parse(str(value).strip(), tz="UTC")
    except ValueError:
        moment = None
    if not isinstance(moment, datetime):  # a duration or a bare time is not a moment
        raise ValueError(f"{what} must be an ISO 8601 date or time, got {value!r}")
    return whole_second(moment)


def plan_window(*, full: bool, incremental: bool, interval_start: datetime | None,
                interval_end: datetime | None, watermark: datetime | None, start: datetime | None,
                now: datetime, settle: timedelta) -> ExportWindow:
    """Decide what an export reads. Pure: every case of the semantics table is a unit test.

    :param full: the operator's ``full`` argument.
    :param incremental: whether the API can filter the stream by update time.
    :param interval_start: the run's ``data_interval_start`` (None or equal to the end: no interval).
    :param interval_end: the run's ``data_interval_end``.
    :param watermark: the end of the stream's last successful export, if any.
    :param start: where the first export of the stream starts (the operator's ``start``).
    :param now: the current time.
    :param settle: how far behind ``now`` a range ends, so records written in the last moments (and
        a clock a little ahead of the API's) are left for the next run instead of being missed.
    """
    until = whole_second(now - settle)
    if not incremental:
        return ExportWindow(NOT_INCREMENTAL, None, None, "the API cannot filter it by update time")
    if full:
        return ExportWindow(FULL, None, until, "full=True")
    if interval_start is not None and interval_end is not None and interval_start < interval_end:
        return ExportWindow(DATA_INTERVAL, whole_second(interval_start), whole_second(interval_end),
                            "the run's data interval")
    if watermark is not None:
        return ExportWindow(SINCE_WATERMARK, whole_second(watermark), until,
                            "from where the last successful export ended")
    if start is not None:
        return ExportWindow(SINCE_START, whole_second(start), until, "first export of this stream, from start=")
    return ExportWindow(FIRST_FULL, None, until, "first export of this stream: no watermark yet")


class VariableBackend(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any], description: str) -> None: ...


class AirflowVariables:
    """Watermarks kept as JSON Airflow Variables (through the Task SDK, so from a running task)."""

    def get(self, key: str) -> dict[str, Any] | None:
        from airflow.sdk import Variable

        value = Variable.get(key, default=None, deserialize_json=True)
        return value if isinstance(value, dict) else None

    def set(self, key: str, value: dict[str, Any], description: str) -> None:
        from airflow.sdk import Variable

        Variable.set(key, value, description=description, serialize_json=True)


class MemoryVariables:
    """Watermarks in a dict, for operators run outside an Airflow task (tests, benchmarks)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.values.get(key)

    def set(self, key: str, value: dict[str, Any], description: str) -> None:
        self.values[key] = value


# Code that runs operators outside a task sets this to MemoryVariables(); tasks use Airflow's Variables.
backend: VariableBackend = AirflowVariables()


class WatermarkStore:
    """The watermark of one export stream.

    :param key: the Variable's key, ``crm_export_watermark.<dag_id>.<task_id>[.<map_index>]`` by default.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def read(self) -> datetime | None:
        value = backend.get(self.key)
        if not value or not value.get("until"):
            return None
        try:
            return parse_moment(value["until"], f"Variable {self.key!r} field 'until'")
        except ValueError as err:
            raise ValueError(f"{err}; fix or delete the Variable to start over") from None

    def advance(self, window: ExportWindow, **facts: Any) -> bool:
        """After a successful export: move the watermark to ``window.end`` unless it is already later
        (a backfill of an old interval never moves it back; a full export, which covered everything
        before its end, always sets it). Returns whether it moved."""
        if not window.advances_watermark or window.end is None:
            return False
        current = self.read()
        if current is not None and current >= window.end and window.case != FULL:
            return False
        backend.set(self.key, {"until": _text(window.end), **window.as_dict(), **facts},
                    description="Where the next incremental export of this task starts (airflow-provider-crm). "
                                "Delete to export everything again; edit 'until' to re-read from that moment.")
        return True


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _run_type(context: Any) -> str:
    run_type = getattr(context.get("dag_run"), "run_type", None)
    return str(getattr(run_type, "value", run_type) or "")


def plan_export(operator: Any, context: Any, *, full: bool, incremental: bool, start: Any,
                settle_seconds: float, watermark_key: str | None) -> tuple[ExportWindow, WatermarkStore]:
    """The window an export operator reads this run, logged first thing, and its watermark store.

    :param operator: the export operator (its ``log``, ``dag_id`` and ``task_id`` are used).
    :param context: the task's context.
    """
    key = watermark_key or f"{VARIABLE_PREFIX}.{task_label(operator, context)}"
    store = WatermarkStore(key)
    first = parse_moment(start, "start") if start not in (None, "") else None
    window = plan_window(full=full, incremental=incremental, interval_start=context.get("data_interval_start"),
                         interval_end=context.get("data_interval_end"),
                         watermark=store.read() if incremental and not full else None, start=first,
                         now=utc_now(), settle=timedelta(seconds=settle_seconds))
    operator.log.info("Export range %s; watermark Variable %r", window.describe(), key)
    if window.case == FIRST_FULL and _run_type(context) == "scheduled":
        operator.log.warning(
            "This scheduled run has an empty data interval (Airflow 3's cron schedules give start == end unless "
            "[scheduler] create_cron_data_intervals is True) and the stream has no watermark yet, so it exports "
            "EVERYTHING. Later runs continue from where this one ends. Set start= to begin from a date instead.")
    if window.empty:
        operator.log.info("Nothing to read: the watermark (%s) is not before the range's end", _text(window.start))  # type: ignore[arg-type]
    return window, store


def commit_export(operator: Any, context: Any, store: WatermarkStore, window: ExportWindow, **facts: Any) -> None:
    """Call once the export's file is in place: the stream's next run starts where this one ended."""
    if store.advance(window, run_id=context.get("run_id"), **facts):
        operator.log.info("Watermark %r moved to %s", store.key, _text(window.end))  # type: ignore[arg-type]
