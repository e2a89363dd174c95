"""Values in Pipefy's write formats by field type, and read values flattened for rows."""

from __future__ import annotations

import pytest

from airflow_provider_crm.clients.pipefy.values import flatten_card_fields, to_pipefy_value
from airflow_provider_crm.common.errors import CrmInputError


@pytest.mark.parametrize(
    ("ftype", "value", "written"),
    [("number", 12.5, "12.5"), ("currency", "1235.32", "1235.32"), ("date", "2026-03-01", "2026-03-01"),
     ("datetime", "2026-03-01T10:00:00", "2026-03-01T10:00:00+00:00"), ("time", "09:30", "09:30"),
     ("checklist_vertical", "A", ["A"]), ("label_select", [1, 2], ["1", "2"]), ("short_text", True, "true")],
)
def test_pipefy_values_written_by_field_type(ftype, value, written):
    assert to_pipefy_value({"id": "f", "label": "F", "type": ftype}, value, date_format="yyyy-mm-dd") == written


def test_pipefy_dates_are_written_dd_mm_yyyy_by_default():
    """The only write format a real client shows (api-notes, "Checked against public evidence")."""
    assert to_pipefy_value({"id": "d", "type": "date"}, "2026-03-01") == "01/03/2026"


def test_pipefy_bad_value_names_field_and_value():
    with pytest.raises(CrmInputError, match=r"field 'Plan' \(select\): 'Gold' is not one of its options"):
        to_pipefy_value({"id": "plan", "label": "Plan", "type": "select", "options": ["Basic"]}, "Gold")
    with pytest.raises(CrmInputError, match="'Seats' .*takes a single value"):
        to_pipefy_value({"id": "s", "label": "Seats", "type": "number"}, [1, 2])


def test_flatten_keeps_machine_values_beside_display():
    card = {"fields": [{"field": {"id": "due", "label": "Due"}, "value": "01/03/2026", "date_value": "2026-03-01"},
                       {"field": {"id": "tags", "label": "Tags"}, "value": '["a"]', "array_value": ["a"]}]}
    flat = flatten_card_fields(card)
    assert flat["Due"] == flat["due"] == "2026-03-01" and flat["due__display"] == "01/03/2026"
    assert flat["Tags"] == ["a"]
