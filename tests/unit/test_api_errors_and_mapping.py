"""Envelopes, typed errors, both paginations and the custom-field mapping, with HTTP mocked."""

from __future__ import annotations

import json

import pytest
import responses

from airflow_provider_crm.clients.pipefy.errors import pipefy_error
from airflow_provider_crm.clients.pipefy.values import flatten_card_fields, to_pipefy_value
from airflow_provider_crm.common.errors import (
    CrmAuthError,
    CrmError,
    CrmInputError,
    CrmInternalServerError,
    CrmNotFoundError,
    CrmPermanentApiError,
    CrmPermissionError,
    CrmPlanLimitError,
    CrmRateLimitError,
    CrmTransientApiError,
    CrmValidationError,
)
from airflow_provider_crm.hooks.pipedrive import FieldMap, PipedriveHook, pipedrive_error
from airflow_provider_crm.hooks.pipefy import PipefyHook

KEY_PLAN = "a" * 40
KEY_REGION = "b" * 40


@pytest.mark.parametrize(
    ("code", "cls"),
    [("UNAUTHORIZED", CrmAuthError), ("PERMISSION_DENIED", CrmPermissionError), ("INVALID_ROLE", CrmPermissionError),
     ("RESOURCE_NOT_FOUND", CrmNotFoundError), ("RECORD_NOT_FOUND", CrmNotFoundError),
     ("INVALID_INPUT", CrmValidationError), ("RECORD_INVALID", CrmValidationError),
     ("FEATURE_NOT_ALLOWED_BY_ORGANIZATION_PLAN", CrmPlanLimitError),
     ("INTERNAL_SERVER_ERROR", CrmInternalServerError), ("TOO_MANY_REQUESTS", CrmRateLimitError),
     # Pipefy's e-mail sending limit, not the monthly API quota (api-notes, "Checked against public evidence")
     ("USAGE_LIMIT_EXCEEDED", CrmPlanLimitError), ("SOMETHING_NEW", CrmPermanentApiError)],
)
def test_pipefy_error_codes_map_to_types_keeping_message_and_correlation_id(code, cls):
    err = pipefy_error([{"message": "Card not found with id: 1", "extensions": {"code": code,
                                                                                "correlation_id": "c-123"}}],
                       data={"deleteCard": None})
    assert isinstance(err, cls)
    assert "Card not found with id: 1" in str(err) and "c-123" in str(err)
    if hasattr(err, "data"):
        assert err.data == {"deleteCard": None}


def test_pipefy_older_error_form_and_permission_hint():
    old = pipefy_error([{"message": "Not found", "code": 30003, "type": "ResourceNotFoundError"}])
    assert isinstance(old, CrmNotFoundError)
    denied = pipefy_error([{"message": "Permission denied", "extensions": {"code": "PERMISSION_DENIED"}}])
    assert "member of each pipe" in str(denied)


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [(401, {"error": "unauthorized access"}, CrmAuthError), (402, {"error": "Company account is not open"},
                                                              CrmPlanLimitError),
     (403, {"error": "limit", "code": "feature_capping_deals_limit"}, CrmPlanLimitError),
     (403, {"error": "forbidden"}, CrmPermissionError), (404, {"error": "Entity was not found"}, CrmNotFoundError),
     (410, {"error": "gone"}, CrmNotFoundError), (400, {"error": "bad", "error_info": "limit"}, CrmValidationError),
     (422, {"error": "unprocessable"}, CrmValidationError), (429, {"error": "request over limit"}, CrmRateLimitError),
     (503, None, CrmTransientApiError), (415, {"error": "feature not enabled"}, CrmPermanentApiError)],
)
def test_pipedrive_statuses_map_to_types(status, body, cls):
    err = pipedrive_error(status, body, "GET /api/v2/deals/1")
    assert isinstance(err, cls) and "GET /api/v2/deals/1" in str(err)


@pytest.fixture
def pd_hook(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PD", json.dumps({"conn_type": "pipedrive", "password": "tok-123456",
                                                      "host": "https://pd.test", "extra": {"rate_limit_store": "memory"}}))
    return PipedriveHook("pd")


@responses.activate
def test_pipedrive_cursor_pagination(pd_hook):
    responses.get("https://pd.test/api/v2/deals", json={"success": True, "data": [{"id": 1}, {"id": 2}],
                                                        "additional_data": {"next_cursor": "c2"}})
    responses.get("https://pd.test/api/v2/deals", json={"success": True, "data": [{"id": 3}],
                                                        "additional_data": {"next_cursor": None}})
    assert [d["id"] for d in pd_hook.iter_records("deals")] == [1, 2, 3]
    assert "cursor=c2" in responses.calls[1].request.url and "limit=500" in responses.calls[0].request.url


@responses.activate
def test_pipedrive_offset_pagination_and_error_envelope(pd_hook):
    responses.get("https://pd.test/api/v1/notes", json={"success": True, "data": [{"id": 1}], "additional_data": {
        "pagination": {"start": 0, "limit": 500, "more_items_in_collection": True, "next_start": 500}}})
    responses.get("https://pd.test/api/v1/notes", json={"success": True, "data": [{"id": 2}], "additional_data": {
        "pagination": {"start": 500, "limit": 500, "more_items_in_collection": False}}})
    assert [n["id"] for n in pd_hook.iter_records("notes")] == [1, 2]
    assert "start=480" in responses.calls[1].request.url  # pages overlap by 20 (4 %)
    responses.get("https://pd.test/api/v2/deals/9", status=200, json={"success": False, "error": "odd"})
    with pytest.raises(CrmTransientApiError, match="odd"):
        pd_hook.request("GET", "v2", "/deals/9")


def test_field_map_both_ways():
    fmap = FieldMap("deals", [
        {"key": "title", "name": "Title", "field_type": "varchar", "is_custom_field": False},
        {"key": KEY_PLAN, "name": "Onboarding plan", "field_type": "enum", "is_custom_field": True,
         "options": [{"id": 1, "label": "Basic"}, {"id": 2, "label": "Pro"}]},
        {"key": KEY_REGION, "name": "Region", "field_type": "set", "is_custom_field": True,
         "options": [{"id": 7, "label": "EMEA"}, {"id": 8, "label": "APAC"}]},
    ])
    assert fmap.key_for("onboarding PLAN") == KEY_PLAN
    assert fmap.encode(KEY_PLAN, "pro") == 2 and fmap.encode(KEY_REGION, ["EMEA", 8]) == [7, 8]
    with pytest.raises(CrmInputError, match="'Gold' is not one of its options"):
        fmap.encode(KEY_PLAN, "Gold")
    with pytest.raises(CrmInputError, match="did you mean 'Onboarding plan'"):
        fmap.key_for("Onboardng plan")
    v2 = {"id": 1, "title": "x", "custom_fields": {KEY_PLAN: 2, KEY_REGION: [7]}}
    assert fmap.rename_record(v2) == {"id": 1, "title": "x", "Onboarding plan": "Pro", "Region": ["EMEA"]}
    v1 = {"id": 1, KEY_PLAN: 1}
    assert fmap.rename_record(v1, labels=False) == {"id": 1, "Onboarding plan": 1}


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


@responses.activate
def test_pipefy_relay_pagination_requests_at_most_50(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PF", json.dumps({"conn_type": "pipefy", "password": "tok-123456",
                                                      "host": "https://pf.test/graphql",
                                                      "extra": {"rate_limit_store": "memory"}}))
    page = lambda ids, more, cursor: {"data": {"allCards": {  # noqa: E731
        "pageInfo": {"hasNextPage": more, "endCursor": cursor}, "edges": [{"node": {"id": i}} for i in ids]}}}
    responses.post("https://pf.test/graphql", json=page(["1", "2"], True, "opaque=="))
    responses.post("https://pf.test/graphql", json=page(["3"], False, None))
    assert [c["id"] for c in PipefyHook("pf").iter_pipe_cards("301")] == ["1", "2", "3"]
    bodies = [json.loads(c.request.body) for c in responses.calls]
    assert all(b["variables"]["first"] == 50 for b in bodies)
    assert bodies[1]["variables"]["after"] == "opaque=="


PIPEFY_URL = "https://pipefy.test/graphql"


@pytest.fixture
def pipefy_conn(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PIPEFY_ERRORS", json.dumps({
        "conn_type": "pipefy", "host": PIPEFY_URL, "password": "tok-errors-5e1d", "extra": {"rate_limit_store": "memory"}}))
    from airflow_provider_crm.hooks.pipefy import PipefyHook

    return PipefyHook("pipefy_errors")


@responses.activate
@pytest.mark.parametrize(("body", "status", "cls", "text"), [
    ({"error": "invalid_token"}, 200, CrmAuthError, "Connection 'pipefy_errors'"),
    ({"error": "invalid_token"}, 401, CrmAuthError, "pipefy_errors"),
    ({"error": {"message": "Permission denied", "details": {"code": "PERMISSION_DENIED",
                                                            "correlation_id": "c-77"}}}, 200, CrmPermissionError, "c-77"),
])
def test_pipefy_singular_error_answers_are_typed(pipefy_conn, body, status, cls, text):
    """Pipefy answers some failures with a top-level `error` (not `errors`), even with HTTP 200."""
    responses.post(PIPEFY_URL, json=body, status=status)
    with pytest.raises(cls) as caught:
        pipefy_conn.get_card("1")
    assert text in str(caught.value) and "tok-errors" not in str(caught.value)


INTERNAL = {"data": None, "errors": [{"message": "Something went wrong", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}


@responses.activate
def test_pipefy_internal_server_error_is_retried_once_for_a_read(pipefy_conn, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    for _ in range(3):
        responses.post(PIPEFY_URL, json=INTERNAL)
    with pytest.raises(CrmInternalServerError):
        pipefy_conn.get_card("1")
    assert len(responses.calls) == 2  # the first try and one retry, not five


@responses.activate
def test_pipefy_internal_server_error_is_never_retried_for_a_create(pipefy_conn, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    fields = {"data": {"pipe": {"id": "1", "start_form_fields": [], "phases": []}}}
    responses.post(PIPEFY_URL, json=fields)
    responses.post(PIPEFY_URL, json=INTERNAL)
    responses.post(PIPEFY_URL, json={"data": {"createCard": {"card": {"id": "9"}}}})
    with pytest.raises(CrmError):
        pipefy_conn.create_card("1", title="once")
    creates = [c for c in responses.calls if b"createCard" in (c.request.body or b"")]
    assert len(creates) == 1

