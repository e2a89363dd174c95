"""PipedriveHook with HTTP mocked (``responses``): auth header, OAuth rotation kept in a Variable, links,
the entity registry, exports' end."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import responses
from responses import matchers

from airflow_provider_crm.common.errors import CrmAuthError, CrmInputError
from airflow_provider_crm.hooks.pipedrive import PipedriveHook, rotated_token_variable
from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator

OAUTH_URL = "https://oauth.test/oauth/token"


def _conn(monkeypatch, conn_id: str, **fields) -> None:
    body = {"conn_type": "pipedrive", "extra": {"rate_limit_store": "memory", **fields.pop("extra", {})}, **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))


@pytest.fixture
def oauth_hook(monkeypatch):
    _conn(monkeypatch, "pd_oauth", extra={"client_id": "cid", "client_secret": "csecret",
                                          "refresh_token": "rt-conn", "oauth_token_url": OAUTH_URL})
    return PipedriveHook("pd_oauth")


def _token_answer(refresh: str) -> dict:
    return {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh,
            "api_domain": "https://acme.pipedrive.com"}


@responses.activate
def test_token_goes_in_header_never_in_url(monkeypatch):
    _conn(monkeypatch, "pd", password="tok-secret-123", host="https://pd.test")
    responses.get("https://pd.test/api/v1/users", json={"success": True, "data": [{"id": 1}, {"id": 2}]})
    assert [u["id"] for u in PipedriveHook("pd").iter_records("users")] == [1, 2]
    request = responses.calls[0].request
    assert request.headers["x-api-token"] == "tok-secret-123"
    assert "tok-secret-123" not in request.url and "api_token" not in request.url
    assert "limit" not in request.url  # /v1/users takes no pagination parameters in the spec


@responses.activate
def test_a_netrc_entry_for_the_api_host_does_not_replace_the_oauth_bearer(oauth_hook, monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine acme.pipedrive.com login someone password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    responses.post(OAUTH_URL, json=_token_answer("rt-conn"))
    responses.get("https://acme.pipedrive.com/api/v1/users/me", json={"success": True, "data": {"id": 7}})
    monkeypatch.setattr(PipedriveHook, "_store_rotated_refresh_token", lambda self, token: None)
    assert oauth_hook.request("GET", "v1", "/users/me")["data"] == {"id": 7}
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer at-1"


@responses.activate
def test_rotated_refresh_token_is_stored_in_a_variable_and_used_first(oauth_hook, monkeypatch):
    stored: dict[str, str] = {}
    monkeypatch.setattr("airflow.sdk.Variable.set", lambda key, value, description=None: stored.update({key: value}))
    monkeypatch.setattr("airflow.sdk.Variable.get", lambda key, default=None: stored.get(key, default))
    responses.post(OAUTH_URL, json=_token_answer("rt-2"),
                   match=[matchers.urlencoded_params_matcher({"grant_type": "refresh_token",
                                                               "refresh_token": "rt-conn"})])
    responses.get("https://acme.pipedrive.com/api/v2/deals/1", json={"success": True, "data": {"id": 1}})
    assert oauth_hook.get("deals", 1) == {"id": 1}
    assert len(responses.calls) == 2
    assert stored == {rotated_token_variable("pd_oauth"): "rt-2"}
    assert responses.calls[1].request.headers["Authorization"] == "Bearer at-1"
    assert oauth_hook.record_url("deals", 1) == "https://acme.pipedrive.com/deal/1"  # from api_domain

    # the next task starts from the connection's (now rotated-away) token but tries the stored one first
    responses.post(OAUTH_URL, json=_token_answer("rt-3"),
                   match=[matchers.urlencoded_params_matcher({"grant_type": "refresh_token", "refresh_token": "rt-2"})])
    next_task = PipedriveHook("pd_oauth")
    assert next_task.get("deals", 1) == {"id": 1}
    assert stored[rotated_token_variable("pd_oauth")] == "rt-3"


@responses.activate
def test_stale_stored_token_falls_back_to_the_connection(oauth_hook, monkeypatch):
    monkeypatch.setattr("airflow.sdk.Variable.get", lambda key, default=None: "rt-stale")
    monkeypatch.setattr("airflow.sdk.Variable.set", lambda *a, **k: None)
    responses.post(OAUTH_URL, status=400, json={"success": False, "message": "Invalid grant"},
                   match=[matchers.urlencoded_params_matcher({"grant_type": "refresh_token",
                                                               "refresh_token": "rt-stale"})])
    responses.post(OAUTH_URL, json=_token_answer("rt-conn"))
    responses.get("https://acme.pipedrive.com/api/v2/deals/1", json={"success": True, "data": {"id": 1}})
    assert oauth_hook.get("deals", 1)["id"] == 1


@responses.activate
def test_refused_refresh_names_connection_and_variable_not_the_token(oauth_hook, monkeypatch, capsys):
    monkeypatch.setattr("airflow.sdk.Variable.get", lambda key, default=None: default)
    responses.post(OAUTH_URL, status=400, json={"success": False, "message": "Invalid grant"})
    with pytest.raises(CrmAuthError) as err:
        oauth_hook.get("deals", 1)
    text = str(err.value)
    assert "'pd_oauth'" in text and rotated_token_variable("pd_oauth") in text
    assert "rt-conn" not in text and "csecret" not in text and "rt-conn" not in capsys.readouterr().out


@responses.activate
def test_rotation_outside_a_task_logs_what_to_do_without_the_token(oauth_hook, monkeypatch, capsys):
    monkeypatch.setattr("airflow.sdk.Variable.get", lambda key, default=None: default)

    def refuse(*args, **kwargs):
        raise RuntimeError("no API server")

    monkeypatch.setattr("airflow.sdk.Variable.set", refuse)
    responses.post(OAUTH_URL, json=_token_answer("rt-new-secret"))
    responses.get("https://acme.pipedrive.com/api/v2/deals/1", json={"success": True, "data": {"id": 1}})
    oauth_hook.get("deals", 1)
    assert len(responses.calls) == 2  # refreshed, then asked the api_domain straight away
    logged = capsys.readouterr().out
    assert "'refresh_token' extra" in logged and "pd_oauth" in logged
    assert "rt-new-secret" not in logged


def test_web_url_from_company_domain_or_host(monkeypatch):
    _conn(monkeypatch, "pd_a", password="t-123456", extra={"company_domain": "acme"})
    _conn(monkeypatch, "pd_b", password="t-123456", host="https://globex.pipedrive.com")
    _conn(monkeypatch, "pd_c", password="t-123456")
    assert PipedriveHook("pd_a").record_url("persons", 5) == "https://acme.pipedrive.com/person/5"
    assert PipedriveHook("pd_b").record_url("deals", 5) == "https://globex.pipedrive.com/deal/5"
    assert PipedriveHook("pd_c").record_url("leads", "u-1") == "https://app.pipedrive.com/leads/inbox/u-1"


def test_archived_list_only_for_deals(monkeypatch):
    _conn(monkeypatch, "pd", password="t-123456", host="https://pd.test")
    with pytest.raises(CrmInputError, match="persons have no archived list"):
        list(PipedriveHook("pd").iter_records("persons", archived=True))


@responses.activate
def test_export_applies_the_interval_end_where_the_api_has_no_updated_until(monkeypatch, tmp_path):
    """v1 notes take updated_since only: a note updated at or after the end belongs to the next run."""
    _conn(monkeypatch, "pipedrive_default", password="t-123456", host="https://pd.test")
    page = {"success": True, "additional_data": {"pagination": {"more_items_in_collection": False}}, "data": [
        {"id": 1, "update_time": "2026-03-01 09:59:59"},
        {"id": 2, "update_time": "2026-03-01 10:00:00"},  # == end: next run
        {"id": 1, "update_time": "2026-03-01 09:59:59"},  # offset pages shifted: not twice
    ]}
    responses.get("https://pd.test/api/v1/notes", json=page)
    path = tmp_path / "notes.jsonl"
    start, end = datetime(2026, 3, 1, 9, tzinfo=timezone.utc), datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
    summary = PipedriveExportOperator(task_id="e", entity="notes", path=str(path), rename_custom_fields=False).execute(
        {"data_interval_start": start, "data_interval_end": end})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1]
    assert summary["records"] == 1
    url = responses.calls[0].request.url
    assert "updated_since=2026-03-01+09%3A00%3A00" in url and "updated_until" not in url
