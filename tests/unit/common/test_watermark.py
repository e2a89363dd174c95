"""The semantics table of docs/incremental-exports.md, case by case, and the boundary second."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import responses

from airflow_provider_crm.clients.pipefy.rows import updated_within as _updated_within
from airflow_provider_crm.common import watermark
from airflow_provider_crm.common.watermark import (
    DATA_INTERVAL,
    FIRST_FULL,
    FULL,
    NOT_INCREMENTAL,
    SINCE_START,
    SINCE_WATERMARK,
    WatermarkStore,
    parse_moment,
    plan_window,
)
from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator

NOW = datetime(2026, 3, 2, 10, 0, 0, 700_000, tzinfo=timezone.utc)
SETTLE = timedelta(seconds=10)
UNTIL = datetime(2026, 3, 2, 9, 59, 50, tzinfo=timezone.utc)  # NOW - SETTLE in whole seconds
WM = datetime(2026, 3, 1, 10, 0, 0, tzinfo=timezone.utc)


def plan(**overrides):
    args = {"full": False, "incremental": True, "interval_start": None, "interval_end": None, "watermark": None,
            "start": None, "now": NOW, "settle": SETTLE}
    return plan_window(**{**args, **overrides})


def test_first_run_ever_reads_everything_up_to_now_less_the_settling_delay():
    window = plan()
    assert (window.case, window.start, window.end) == (FIRST_FULL, None, UNTIL)
    assert window.advances_watermark


def test_first_run_with_start_reads_from_it():
    window = plan(start=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert (window.case, window.start, window.end) == (SINCE_START, datetime(2026, 1, 1, tzinfo=timezone.utc), UNTIL)


@pytest.mark.parametrize("interval", [(None, None), (NOW, NOW)], ids=["no interval", "empty interval"])
def test_scheduled_or_manual_run_without_a_real_interval_continues_from_the_watermark(interval):
    window = plan(interval_start=interval[0], interval_end=interval[1], watermark=WM,
                  start=datetime(2020, 1, 1, tzinfo=timezone.utc))  # start only matters for the first run
    assert (window.case, window.start, window.end) == (SINCE_WATERMARK, WM, UNTIL)


def test_a_real_data_interval_is_read_exactly_whatever_the_watermark():
    a, b = datetime(2026, 2, 1, tzinfo=timezone.utc), datetime(2026, 2, 2, tzinfo=timezone.utc)
    window = plan(interval_start=a, interval_end=b, watermark=WM)
    assert (window.case, window.start, window.end) == (DATA_INTERVAL, a, b)


def test_full_ignores_watermark_and_interval():
    window = plan(full=True, watermark=WM, interval_start=WM - timedelta(days=1), interval_end=WM)
    assert (window.case, window.start, window.end) == (FULL, None, UNTIL)


def test_an_entity_the_api_cannot_filter_is_read_whole_and_keeps_no_watermark():
    window = plan(incremental=False, watermark=WM)
    assert (window.case, window.start, window.end) == (NOT_INCREMENTAL, None, None)
    assert not window.advances_watermark


def test_a_watermark_at_or_after_the_end_reads_nothing():
    assert plan(watermark=UNTIL).empty and plan(watermark=UNTIL + timedelta(hours=1)).empty
    assert not plan(watermark=UNTIL - timedelta(seconds=1)).empty


def test_the_watermark_moves_only_forward_except_after_a_full_export(watermarks):
    store = WatermarkStore("crm_export_watermark.d.t")
    assert store.read() is None
    assert store.advance(plan(watermark=WM))
    assert store.read() == UNTIL
    old = plan(interval_start=WM - timedelta(days=2), interval_end=WM - timedelta(days=1))
    assert not store.advance(old)  # a backfill of an old interval never moves it back
    assert store.read() == UNTIL
    assert store.advance(plan(full=True, now=NOW - timedelta(hours=1)))  # full: covered everything before its end
    assert store.read() == UNTIL - timedelta(hours=1)
    assert watermarks.values["crm_export_watermark.d.t"]["case"] == FULL


def test_a_failed_run_leaves_the_watermark_so_the_next_run_rereads_its_range(watermarks):
    store = WatermarkStore("k")
    store.advance(plan(watermark=None))
    failed = plan(watermark=store.read(), now=NOW + timedelta(days=1))  # never committed
    retry = plan(watermark=store.read(), now=NOW + timedelta(days=2))
    assert retry.start == UNTIL and retry.start <= failed.start


def test_a_watermark_variable_that_cannot_be_read_names_it(watermarks):
    watermarks.values["k"] = {"until": "yesterday"}
    with pytest.raises(ValueError, match="Variable 'k'.*delete the Variable"):
        WatermarkStore("k").read()


def _card(stamp: str) -> dict:
    return {"updated_at": stamp}


def test_a_pipefy_record_in_the_boundary_second_belongs_to_the_later_run_only():
    boundary = datetime(2026, 3, 2, 10, 0, 0, tzinfo=timezone.utc)
    first = (boundary - timedelta(days=1), boundary)
    second = (boundary, boundary + timedelta(days=1))
    for stamp in ("2026-03-02T10:00:00Z", "2026-03-02T10:00:00.999+00:00", "2026-03-02T09:59:59.999Z"):
        hits = [_updated_within(_card(stamp), *first), _updated_within(_card(stamp), *second)]
        assert hits.count(True) == 1, stamp
    assert _updated_within(_card("2026-03-02T10:00:00.5Z"), *second)
    assert _updated_within(_card("2026-03-02T09:59:59Z"), None, boundary)  # a first export has no start


def _deals_page(*deals: dict) -> dict:
    return {"success": True, "data": list(deals), "additional_data": {"next_cursor": None}}


@responses.activate
def test_consecutive_pipedrive_runs_share_their_boundary_second(monkeypatch, tmp_path, watermarks):
    """Run 1 ends where run 2 starts, as the API's updated_until (exclusive) and updated_since (inclusive)."""
    monkeypatch.setenv("AIRFLOW_CONN_PIPEDRIVE_DEFAULT", json.dumps({
        "conn_type": "pipedrive", "host": "https://pd.test", "password": "tok",
        "extra": {"rate_limit_store": "memory"}}))
    responses.get("https://pd.test/api/v2/deals", json=_deals_page({"id": 1, "update_time": "2026-03-02T09:59:49Z"}))
    clock = iter([NOW, NOW + timedelta(hours=1)])
    monkeypatch.setattr(watermark, "utc_now", lambda: next(clock))
    context = {"data_interval_start": NOW, "data_interval_end": NOW, "run_id": "scheduled__x"}
    for run in (1, 2):
        PipedriveExportOperator(task_id="e", entity="deals", path=str(tmp_path / f"{run}.jsonl"),
                                rename_custom_fields=False).execute(context)
    # each run first asks for its range's earliest record (limit 1: the latency that sizes its slices)
    reads = [call.request.params for call in responses.calls if call.request.params.get("limit") != "1"]
    first, second = reads
    # a full first run starts at the earliest record there is, so it may be sliced like any other
    assert first.get("updated_since", "2026-03-02T09:59:49Z") == "2026-03-02T09:59:49Z"
    assert first["updated_until"] == "2026-03-02T09:59:50Z"
    assert second["updated_since"] == first["updated_until"]
    assert second["updated_until"] == "2026-03-02T10:59:50Z"
    assert watermarks.values["crm_export_watermark.adhoc_airflow.e"]["until"] == "2026-03-02T10:59:50Z"


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-01", datetime(2026, 1, 1, tzinfo=timezone.utc)),  # no offset: UTC, never the worker's local time
    ("2026-01-01T10:00:00Z", datetime(2026, 1, 1, 10, tzinfo=timezone.utc)),
    ("2026-01-01T12:00:00+02:00", datetime(2026, 1, 1, 10, tzinfo=timezone.utc)),
    ("20260101T100000", datetime(2026, 1, 1, 10, tzinfo=timezone.utc)),
    (" 2026-01-01 10:00:00.75 ", datetime(2026, 1, 1, 10, tzinfo=timezone.utc)),
])
def test_start_accepts_iso_8601_texts_as_utc(text, expected):
    assert parse_moment(text, "start") == expected


@pytest.mark.parametrize("text", ["yesterday", "P1D", ""])
def test_start_that_is_not_a_moment_is_named(text):
    with pytest.raises(ValueError, match="start must be an ISO 8601 date or time"):
        parse_moment(text, "start")
