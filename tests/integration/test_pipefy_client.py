"""The Pipefy client against the corrected emulator (issue 17): table-record updates 30 values a
call, each of Pipefy's error shapes typed, page sizes that are never assumed to be served in full."""

from __future__ import annotations

import json

import pytest
import requests

from airflow_provider_crm.common.errors import CrmAuthError, CrmPermissionError, CrmValidationError
from airflow_provider_crm.hooks.pipefy import PipefyHook

pytestmark = pytest.mark.integration


def counters(sandbox) -> dict:
    return requests.get(f"{sandbox.url}/_sandbox/counters", timeout=10).json()


def fault(sandbox, **spec) -> None:
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"service": "pipefy", **spec}, timeout=10).raise_for_status()


def test_a_31_field_table_record_update_takes_two_calls(connections, sandbox):
    hook = PipefyHook()
    record = hook.create_table_record("403", fields={"Item": "Kick-off"})
    steps = {f"Step {n:02d}": f"done {n}" for n in range(1, 33)}  # 32 fields
    before = counters(sandbox)["by_endpoint"]
    hook.update_table_record(record["id"], table_id="403", fields=steps)
    after = counters(sandbox)["by_endpoint"]
    assert after.get("pipefy UpdateFieldsValues", 0) - before.get("pipefy UpdateFieldsValues", 0) == 2
    assert "pipefy SetTableRecordFieldValue" not in after
    fetched = {f["field"]["id"]: f["value"] for f in next(
        r for r in hook.iter_table_records("403") if r["id"] == record["id"])["record_fields"]}
    assert fetched["step_01"] == "done 1" and fetched["step_32"] == "done 32"


@pytest.mark.parametrize(("status", "body", "cls", "text"), [
    (200, {"error": "invalid_token"}, CrmAuthError, "Connection 'pipefy_default'"),
    (401, {"error": "invalid_token"}, CrmAuthError, "pipefy_default"),
    (200, {"error": {"message": "Permission denied", "details": {"code": "PERMISSION_DENIED",
                                                                 "correlation_id": "corr-42"}}},
     CrmPermissionError, "corr-42"),
    (200, {"data": {"card": None}, "errors": [{"message": "Invalid value", "extensions": {
        "code": "INVALID_INPUT", "correlation_id": "corr-43"}}]}, CrmValidationError, "corr-43"),
], ids=["invalid-token-200", "invalid-token-401", "error-object-200", "errors-list"])
def test_each_error_shape_is_a_typed_error(connections, sandbox, status, body, cls, text):
    fault(sandbox, mode="answer", status=status, body=body, body_contains="query Card")
    card_id = next(PipefyHook().iter_phase_cards("3011"))["id"]
    with pytest.raises(cls) as caught:
        PipefyHook().get_card(card_id)
    assert text in str(caught.value) and "sandbox-pipefy-token" not in str(caught.value)
    assert caught.value.status == status


@pytest.mark.parametrize(("max_page", "page_size"), [(50, 100), (200, 100), (50, 20)])
def test_pages_are_read_to_the_end_whatever_size_is_served(monkeypatch, make_sandbox, max_page, page_size):
    """The emulator caps pages at ``max_page`` (50 like the documented size, or more); the client asks
    for ``page_size`` and follows pageInfo, never assuming a page came back full."""
    server = make_sandbox(pipefy_max_page=max_page, pipefy_cards_per_phase=130)
    monkeypatch.setenv("AIRFLOW_CONN_PIPEFY_DEFAULT", json.dumps({
        "conn_type": "pipefy", "host": server.info()["pipefy_url"], "password": "sandbox-pipefy-token",
        "extra": {"rate_limit_store": "memory", "page_size": page_size}}))
    cards = list(PipefyHook().iter_phase_cards("3011"))
    assert len(cards) == 130 and len({c["id"] for c in cards}) == 130
    calls = counters(server)["by_endpoint"]["pipefy PhaseCards"]
    assert calls == -(-130 // min(max_page, page_size))
