"""Pipedrive envelopes, typed errors, both paginations and the custom-field mapping, with HTTP mocked
(the Pipefy ones are in tests/unit/clients/pipefy)."""

from __future__ import annotations

import json

import pytest
import responses

from airflow_provider_crm.common.errors import (
    CrmAuthError,
    CrmInputError,
    CrmNotFoundError,
    CrmPermanentApiError,
    CrmPermissionError,
    CrmPlanLimitError,
    CrmRateLimitError,
    CrmTransientApiError,
    CrmValidationError,
)
from airflow_provider_crm.hooks.pipedrive import FieldMap, PipedriveHook, pipedrive_error

KEY_PLAN = "a" * 40
KEY_REGION = "b" * 40


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
