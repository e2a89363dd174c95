"""Every auth form of both connection types parses; each invalid one names the connection and field."""

from __future__ import annotations

import json

import pytest
import responses

from airflow_provider_crm.common.errors import CrmConfigError
from airflow_provider_crm.hooks.pipedrive import PipedriveHook
from airflow_provider_crm.hooks.pipefy import PipefyHook

SECRET = "s3cr3t-value-never-shown"


def set_conn(monkeypatch, conn_id, **conn):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def test_pipefy_personal_token_with_defaults(monkeypatch):
    set_conn(monkeypatch, "pf", conn_type="pipefy", password=SECRET)
    s = PipefyHook("pf").settings
    assert (s.api_url, s.token, s.plan, s.client_id) == ("https://api.pipefy.com/graphql", SECRET, "unlimited", None)


def test_pipefy_service_account_and_overrides_old_prefixed_extras(monkeypatch):
    set_conn(monkeypatch, "pf", conn_type="pipefy", host="pipefy.acme.com/graphql",
             extra={"extra__pipefy__client_id": "sa-1", "client_secret": SECRET, "plan": "Business",
                    "requests_per_30s": "100", "monthly_quota": 400, "rate_limit_store": "redis://localhost:6379/0"})
    s = PipefyHook("pf").settings
    assert s.api_url == "https://pipefy.acme.com/graphql"
    assert (s.client_id, s.plan, s.requests_per_30s, s.monthly_quota) == ("sa-1", "business", 100, 400)
    assert s.rate_limit_store == "redis://localhost:6379/0"


def test_pipedrive_token_company_domain_and_old_plan_names(monkeypatch):
    set_conn(monkeypatch, "pd", conn_type="pipedrive", password=SECRET,
             extra={"company_domain": "acme", "plan": "professional", "seats": "4"})
    s = PipedriveHook("pd").settings
    assert s.base_url == "https://acme.pipedrive.com"
    assert (s.auth_type, s.plan, s.seats) == ("token", "premium", 4)


def test_pipedrive_oauth(monkeypatch):
    set_conn(monkeypatch, "pd", conn_type="pipedrive",
             extra={"client_id": "app", "client_secret": SECRET, "refresh_token": SECRET + "r", "plan": "ultimate"})
    s = PipedriveHook("pd").settings
    assert (s.auth_type, s.base_url, s.oauth_token_url) == (
        "oauth", "https://api.pipedrive.com", "https://oauth.pipedrive.com/oauth/token")


@pytest.mark.parametrize(
    ("hook_cls", "conn", "field"),
    [
        (PipefyHook, {"conn_type": "pipefy"}, "password"),
        (PipefyHook, {"conn_type": "pipefy", "extra": {"client_id": "x"}}, "client_secret"),
        (PipefyHook, {"conn_type": "pipefy", "extra": {"client_secret": SECRET}}, "client_id"),
        (PipefyHook, {"conn_type": "pipefy", "password": SECRET, "extra": {"plan": "gold"}}, "plan"),
        (PipefyHook, {"conn_type": "pipefy", "password": SECRET, "extra": {"requests_per_30s": "many"}},
         "requests_per_30s"),
        (PipefyHook, {"conn_type": "pipefy", "password": SECRET, "extra": {"monthly_quota": -5}}, "monthly_quota"),
        (PipefyHook, {"conn_type": "pipefy", "password": SECRET, "host": "ftp://x"}, "host"),
        (PipefyHook, {"conn_type": "pipefy", "password": SECRET,
                      "extra": {"rate_limit_store": f"mongo://user:{SECRET}@db"}}, "rate_limit_store"),
        (PipedriveHook, {"conn_type": "pipedrive"}, "password"),
        (PipedriveHook, {"conn_type": "pipedrive", "extra": {"client_id": "a", "client_secret": SECRET}},
         "refresh_token"),
        (PipedriveHook, {"conn_type": "pipedrive", "password": SECRET, "extra": {"plan": "diamond"}}, "plan"),
        (PipedriveHook, {"conn_type": "pipedrive", "password": SECRET, "extra": {"seats": "0"}}, "seats"),
        (PipedriveHook, {"conn_type": "pipedrive", "password": SECRET, "extra": {"company_domain": "acme.pipedrive.com"}},
         "company_domain"),
        (PipedriveHook, {"conn_type": "pipedrive", "password": SECRET, "extra": {"oauth_token_url": "nope"}},
         "oauth_token_url"),
    ],
)
def test_invalid_connections_name_the_connection_and_field_not_the_secret(monkeypatch, hook_cls, conn, field):
    set_conn(monkeypatch, "bad_conn", **conn)
    with pytest.raises(CrmConfigError) as err:
        _ = hook_cls("bad_conn").settings
    assert err.value.conn_id == "bad_conn" and err.value.field == field
    assert "'bad_conn'" in str(err.value) and f"'{field}'" in str(err.value)
    assert SECRET not in str(err.value)


@responses.activate
def test_pipefy_test_connection_success_and_failure(monkeypatch):
    set_conn(monkeypatch, "pf", conn_type="pipefy", password=SECRET, host="https://pipefy.test/graphql",
             extra={"rate_limit_store": "memory"})
    responses.post("https://pipefy.test/graphql", json={"data": {"me": {"id": "7", "email": "ops@acme.com"}}})
    ok, message = PipefyHook("pf").test_connection()
    assert ok and "ops@acme.com" in message
    assert responses.calls[0].request.headers["Authorization"] == f"Bearer {SECRET}"
    assert "me" in json.loads(responses.calls[0].request.body)["query"]

    responses.post("https://pipefy.test/graphql", status=401, json={"errors": [{"message": "Unauthorized"}]})
    ok, message = PipefyHook("pf").test_connection()
    assert not ok and "'pf'" in message and SECRET not in message


@responses.activate
def test_pipefy_service_account_token_is_fetched_and_used(monkeypatch):
    set_conn(monkeypatch, "pf", conn_type="pipefy", host="https://pipefy.test/graphql",
             extra={"client_id": "sa", "client_secret": SECRET, "oauth_token_url": "https://pipefy.test/oauth/token",
                    "rate_limit_store": "memory"})
    responses.post("https://pipefy.test/oauth/token", json={"access_token": "sa-access", "expires_in": 3600})
    responses.post("https://pipefy.test/graphql", json={"data": {"me": {"id": "1", "email": "sa@acme.com"}}})
    ok, _ = PipefyHook("pf").test_connection()
    assert ok
    assert "client_credentials" in responses.calls[0].request.body
    assert responses.calls[1].request.headers["Authorization"] == "Bearer sa-access"


@responses.activate
def test_pipedrive_test_connection_sends_header_not_query_parameter(monkeypatch):
    set_conn(monkeypatch, "pd", conn_type="pipedrive", password=SECRET, host="https://pd.test",
             extra={"rate_limit_store": "memory"})
    responses.get("https://pd.test/api/v1/users/me",
                  json={"success": True, "data": {"id": 1, "email": "me@acme.com", "company_name": "Acme"}})
    ok, message = PipedriveHook("pd").test_connection()
    assert ok and "me@acme.com" in message
    request = responses.calls[0].request
    assert request.headers["x-api-token"] == SECRET
    assert SECRET not in request.url

    responses.get("https://pd.test/api/v1/users/me", status=401,
                  json={"success": False, "error": "unauthorized access", "errorCode": 401})
    ok, message = PipedriveHook("pd").test_connection()
    assert not ok and "unauthorized access" in message and SECRET not in message


def test_plan_drop_downs_offer_plans_only_with_the_hooks_default():
    """The form's Plan drop-down showed a literal "null" choice (a None among the enum's values)."""
    from airflow_provider_crm.get_provider_info import PIPEDRIVE_CONN_FIELDS, PIPEFY_CONN_FIELDS

    for fields, default in ((PIPEFY_CONN_FIELDS, "unlimited"), (PIPEDRIVE_CONN_FIELDS, "lite")):
        schema = fields["plan"]["schema"]
        assert None not in schema["enum"] and "null" not in schema["enum"] and schema["type"] == "string"
        assert schema["default"] == default
