"""The export helpers of clients/pipedrive/exports.py: filter times, update times, tombstone marks, columns."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow_provider_crm.clients.pipedrive.exports import (
    RangeReader,
    declared_columns,
    mark,
    parse_update_time,
    rfc3339,
    unique_ids,
    v1_time,
)
from airflow_provider_crm.clients.pipedrive.fields import FieldMap, normalise_definition

MOMENT = datetime(2026, 3, 1, 10, 0, 5, tzinfo=timezone(timedelta(hours=2)))
FMAP = FieldMap("deals", [normalise_definition(d) for d in (
    {"field_code": "title", "field_name": "Title", "is_custom_field": False},
    {"field_code": "b" * 40, "field_name": "Tier", "is_custom_field": True, "field_type": "enum",
     "options": [{"id": 3, "label": "Gold"}]})])


def test_filter_times_are_utc_and_a_naive_time_is_utc():
    assert v1_time(MOMENT) == "2026-03-01 08:00:05" and rfc3339(MOMENT) == "2026-03-01T08:00:05Z"
    assert rfc3339(datetime(2026, 3, 1, 8)) == "2026-03-01T08:00:00Z"


def test_update_times_of_every_version_parse():
    expected = datetime(2026, 3, 1, 8, 0, 5, tzinfo=timezone.utc)
    for text in ("2026-03-01T08:00:05Z", "2026-03-01 08:00:05", "2026-03-01T10:00:05+02:00"):
        assert parse_update_time(text) == expected
    assert parse_update_time("soon") is None and parse_update_time(None) is None


def test_records_are_marked_and_renamed():
    assert mark({"id": 1, "status": "deleted"}, None, labels=True, archived_too=False) == (
        {"id": 1, "status": "deleted", "_deleted": True}, "deleted")
    assert mark({"id": 2, "is_archived": True}, None, labels=True, archived_too=False)[1] == "records"
    record, counted = mark({"id": 3, "is_archived": True, "custom_fields": {"b" * 40: 3}}, FMAP, labels=True,
                           archived_too=True)
    assert counted == "archived" and record["Tier"] == "Gold" and record["_archived"] is True


def test_declared_columns_and_unique_ids():
    assert declared_columns(FMAP, True, True, False) == ["id", "title", "Tier", "_deleted"]
    assert declared_columns(None, True, False, True) == ["id", "_archived"]
    assert [r["id"] for r in unique_ids(iter([{"id": 1}, {"id": 2}, {"id": 1}]))] == [1, 2]


def test_range_filters_follow_the_entity():
    start, end = datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2026, 3, 2, tzinfo=timezone.utc)
    deals = RangeReader(None, "deals").filters(start, end, "deleted")  # type: ignore[arg-type]
    assert deals == {"updated_since": "2026-03-01T00:00:00Z", "updated_until": "2026-03-02T00:00:00Z",
                     "sort_by": "update_time", "sort_direction": "asc", "status": "deleted"}
    notes = RangeReader(None, "notes").filters(start, end)  # type: ignore[arg-type]
    assert notes == {"updated_since": "2026-03-01 00:00:00", "sort": "id ASC"}
