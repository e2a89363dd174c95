"""Pipefy's answers read into typed errors: GraphQL error codes, the older form, the singular
top-level `error` shapes, INTERNAL_SERVER_ERROR retried at most once and never for a create."""

from __future__ import annotations

import json

import pytest
import responses

from airflow_provider_crm.clients.pipefy.errors import pipefy_error
from airflow_provider_crm.common.errors import (
    CrmAuthError,
    CrmError,
    CrmInternalServerError,
    CrmNotFoundError,
    CrmPermanentApiError,
    CrmPermissionError,
    CrmPlanLimitError,
    CrmRateLimitError,
    CrmValidationError,
)


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
