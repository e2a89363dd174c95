"""PipefyHook methods with HTTP mocked: the GraphQL they send and how they read the answers."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime

import pytest
import responses

from airflow_provider_crm.clients.pipefy.documents import ME
from airflow_provider_crm.clients.pipefy.settings import PipefySettings
from airflow_provider_crm.common.errors import (
    CrmConfigError,
    CrmNotFoundError,
    CrmTransientApiError,
    CrmValidationError,
)
from airflow_provider_crm.hooks.pipefy import PipefyHook

URL = "https://pf.test/graphql"
FIELDS = [{"id": f"f{i}", "label": f"Field {i}", "type": "number", "required": False} for i in range(35)]
PIPE = {"data": {"pipe": {"id": "1", "name": "P", "phases": [{"id": "11", "name": "Todo", "fields": []},
                                                               {"id": "12", "name": "Done", "fields": []}],
                          "start_form_fields": FIELDS, "labels": []}}}


@pytest.fixture
def hook(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PF", json.dumps({"conn_type": "pipefy", "password": "tok-123456", "host": URL,
                                                      "extra": {"rate_limit_store": "memory"}}))
    return PipefyHook("pf")


def sent(index: int) -> dict:
    return json.loads(responses.calls[index].request.body)


@responses.activate
def test_create_card_sends_converted_fields_and_reads_the_card(hook):
    responses.post(URL, json=PIPE)
    responses.post(URL, json={"data": {"createCard": {"card": {"id": "9", "title": "T", "url": "u"}}}})
    card = hook.create_card("1", title="T", fields={"Field 1": 12.5, "f2": "3"}, phase_id=11)
    assert card["id"] == "9"
    body = sent(1)
    assert "createCard" in body["query"]
    assert body["variables"]["input"] == {"pipe_id": "1", "title": "T", "phase_id": "11", "fields_attributes": [
        {"field_id": "f1", "field_value": "12.5"}, {"field_id": "f2", "field_value": "3"}]}


@responses.activate
def test_update_card_batches_custom_fields_by_30(hook):
    responses.post(URL, json=PIPE)
    ok = {"data": {"updateFieldsValues": {"success": True, "userErrors": []}}}
    responses.post(URL, json=ok)
    responses.post(URL, json=ok)
    hook.update_card("9", pipe_id="1", fields={f["id"]: i for i, f in enumerate(FIELDS)})
    batches = [len(sent(i)["variables"]["input"]["values"]) for i in (1, 2)]
    assert batches == [30, 5]


@responses.activate
def test_update_fields_soft_failure_is_an_error(hook):
    responses.post(URL, json=PIPE)
    responses.post(URL, json={"data": {"updateFieldsValues": {"success": False, "userErrors": [
        {"field": "f1", "message": "is invalid"}]}}})
    with pytest.raises(CrmValidationError, match="card 9: fields not updated: f1: is invalid"):
        hook.update_card("9", pipe_id="1", fields={"f1": 1})


@responses.activate
def test_move_delete_comment(hook):
    responses.post(URL, json={"data": {"moveCardToPhase": None}, "errors": [{"message": 'Field "X" is required!',
                                                                             "extensions": {"code": "INVALID_INPUT"}}]})
    # a refused move reads the card: one that is already in the phase counts as moved; this one is not
    responses.post(URL, json={"data": {"card": {"id": "9", "current_phase": {"id": "11", "name": "Doing"}}}})
    with pytest.raises(CrmValidationError, match='card 9 cannot move to phase 12: Field "X" is required!'):
        hook.move_card("9", "12")
    assert sent(1)["variables"] == {"id": "9"}
    responses.post(URL, json={"data": {"deleteCard": {"success": True}}})
    assert hook.delete_card("9") is True
    responses.post(URL, json={"data": {"createComment": {"comment": {"id": "c1"}}}})
    assert hook.create_comment("9", "hello")["id"] == "c1"
    assert sent(3)["variables"] == {"input": {"card_id": "9", "text": "hello"}}


@responses.activate
def test_missing_card_and_server_errors(hook):
    responses.post(URL, json={"data": {"card": None}})
    with pytest.raises(CrmNotFoundError, match="card 5 not found"):
        hook.get_card("5")
    for _ in range(5):
        responses.post(URL, status=502, body="bad gateway")
    with pytest.raises(CrmTransientApiError, match="server error 502"):
        hook.execute(ME)
    assert len(responses.calls) == 6  # one read, then five attempts of the retried one


@responses.activate
def test_service_account_token_refreshed_once_on_401(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SA", json.dumps({"conn_type": "pipefy", "host": URL, "extra": {
        "client_id": "sa", "client_secret": "secret-xyz", "oauth_token_url": "https://pf.test/oauth/token",
        "rate_limit_store": "memory"}}))
    responses.post("https://pf.test/oauth/token", json={"access_token": "first", "expires_in": 3600})
    responses.post(URL, status=401, json={"errors": [{"message": "Unauthorized"}]})
    responses.post("https://pf.test/oauth/token", json={"access_token": "second", "expires_in": 3600})
    responses.post(URL, json={"data": {"me": {"id": "1", "email": "sa@x"}}})
    assert PipefyHook("sa").me()["id"] == "1"
    assert responses.calls[3].request.headers["Authorization"] == "Bearer second"


def test_the_connection_becomes_frozen_settings_and_the_hook_forwards_the_clients_api(hook, monkeypatch):
    settings = hook.settings
    assert isinstance(settings, PipefySettings) and settings.api_url == URL and settings.token == "tok-123456"
    assert (settings.date_format, settings.page_size) == ("dd/mm/yyyy", 50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.page_size = 10  # type: ignore[misc]
    assert hook.get_conn() is hook.client and hook.get_card.__self__ is hook.client
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        hook.no_such_thing  # noqa: B018
    assert PipefyHook("pf", page_size=200).settings.page_size == 200


@responses.activate
def test_date_format_of_the_connection_is_used_for_date_fields(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ISO", json.dumps({"conn_type": "pipefy", "password": "tok-1", "host": URL,
                                                       "extra": {"rate_limit_store": "memory",
                                                                 "date_format": "yyyy-mm-dd", "page_size": "20"}}))
    pipe = {"data": {"pipe": {"id": "1", "phases": [], "start_form_fields": [
        {"id": "start", "label": "Start", "type": "date"}, {"id": "at", "label": "At", "type": "datetime"}]}}}
    responses.post(URL, json=pipe)
    responses.post(URL, json={"data": {"createCard": {"card": {"id": "9"}}}})
    hook = PipefyHook("iso")
    hook.create_card("1", fields={"Start": date(2026, 3, 1), "At": datetime(2026, 3, 1, 9, 30)})
    assert sent(1)["variables"]["input"]["fields_attributes"] == [
        {"field_id": "start", "field_value": "2026-03-01"}, {"field_id": "at", "field_value": "2026-03-01T09:30:00+00:00"}]
    assert hook.settings.page_size == 20


def test_an_unknown_date_format_names_the_connection_and_field(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BAD", json.dumps({"conn_type": "pipefy", "password": "tok-1",
                                                       "extra": {"date_format": "mm/dd/yyyy"}}))
    with pytest.raises(CrmConfigError) as caught:
        PipefyHook("bad").settings  # noqa: B018
    assert caught.value.field == "date_format" and "dd/mm/yyyy" in str(caught.value)


@responses.activate
def test_fetched_service_account_tokens_are_masked(monkeypatch):
    masked: list[str] = []
    monkeypatch.setattr("airflow_provider_crm.hooks.pipefy._mask", masked.append)
    monkeypatch.setenv("AIRFLOW_CONN_SA", json.dumps({"conn_type": "pipefy", "host": URL, "extra": {
        "client_id": "sa", "client_secret": "secret-xyz", "oauth_token_url": "https://pf.test/oauth/token",
        "rate_limit_store": "memory"}}))
    responses.post("https://pf.test/oauth/token", json={"access_token": "sa-token-1", "expires_in": 3600})
    responses.post(URL, json={"data": {"me": {"id": "1"}}})
    PipefyHook("sa").me()
    assert masked == ["sa-token-1"]


@responses.activate
def test_table_record_fields_go_through_update_fields_values_30_a_call(hook):
    fields = [{"id": f"c{i}", "label": f"Col {i}", "type": "short_text"} for i in range(31)]
    responses.post(URL, json={"data": {"table": {"id": "4", "name": "T", "table_fields": fields}}})
    ok = {"data": {"updateFieldsValues": {"success": True, "userErrors": []}}}
    responses.post(URL, json=ok)
    responses.post(URL, json=ok)
    hook.update_table_record("77", table_id="4", fields={f["label"]: f"v{i}" for i, f in enumerate(fields)})
    batches = [sent(i)["variables"]["input"] for i in (1, 2)]
    assert [len(b["values"]) for b in batches] == [30, 1] and {b["nodeId"] for b in batches} == {"77"}
    assert batches[0]["values"][0] == {"fieldId": "c0", "value": ["v0"]}  # NodeFieldValueInput.value is a list
    assert all("updateFieldsValues" in sent(i)["query"] for i in (1, 2))
