"""Configuration errors fail the task at once, naming the connection and the field, never a secret
(issue 15, item 6): an extra that is not valid JSON, a rate-limit store that cannot be used."""

from __future__ import annotations

import json
import socket

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_crm.common.errors import CrmConfigError
from airflow_provider_crm.hooks.pipedrive import PipedriveAsyncHook, PipedriveHook
from airflow_provider_crm.hooks.pipefy import PipefyHook

TOKEN = "tok-config-secret-1"
EXTRA_SECRET = "client-secret-in-extra-9"
REDIS_PASSWORD = "redis-pw-secret-7"


def _conn(monkeypatch, conn_id: str, conn_type: str, extra) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": conn_type, "host": "https://crm.test", "password": TOKEN, "extra": extra}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_names(err: CrmConfigError, conn_id: str, field: str) -> None:
    text = str(err)
    assert isinstance(err, AirflowFailException)
    assert err.conn_id == conn_id and err.field == field and repr(conn_id) in text and repr(field) in text
    for secret in (TOKEN, EXTRA_SECRET, REDIS_PASSWORD):
        assert secret not in text


@pytest.mark.parametrize("hook_cls,conn_type", [(PipedriveHook, "pipedrive"), (PipefyHook, "pipefy")])
@pytest.mark.parametrize("extra", [
    '{"plan": "ultimate", "client_secret": "' + EXTRA_SECRET + '"',  # cut short
    "{'plan': 'ultimate'}",  # Python, not JSON
    '["plan", "ultimate"]',  # JSON, not an object
], ids=["cut-short", "python-quotes", "json-list"])
def test_an_extra_that_is_not_a_json_object_fails_naming_connection_and_field(monkeypatch, hook_cls, conn_type, extra):
    _conn(monkeypatch, "bad_extra", conn_type, extra)
    with pytest.raises(CrmConfigError) as caught:
        hook_cls("bad_extra").settings  # noqa: B018
    _assert_names(caught.value, "bad_extra", "extra")


async def test_the_async_hook_fails_on_a_bad_extra_too(monkeypatch):
    _conn(monkeypatch, "bad_extra_async", "pipedrive", '{"plan": "ultimate",')
    with pytest.raises(CrmConfigError) as caught:
        await PipedriveAsyncHook("bad_extra_async").aclient()
    _assert_names(caught.value, "bad_extra_async", "extra")


@pytest.mark.parametrize("hook_cls,conn_type", [(PipedriveHook, "pipedrive"), (PipefyHook, "pipefy")])
def test_an_unreachable_redis_store_names_the_connection_and_rate_limit_store(monkeypatch, hook_cls, conn_type):
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{_free_port()}/0"
    _conn(monkeypatch, "bad_redis", conn_type, {"rate_limit_store": url})
    with pytest.raises(CrmConfigError) as caught:
        hook_cls("bad_redis").limiter  # noqa: B018
    _assert_names(caught.value, "bad_redis", "rate_limit_store")
    assert "127.0.0.1" in str(caught.value) and "Redis" in str(caught.value)


def test_an_unwritable_store_directory_names_the_connection_and_rate_limit_store(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    _conn(monkeypatch, "bad_dir", "pipedrive", {"rate_limit_store": f"file://{blocker}/store"})
    with pytest.raises(CrmConfigError) as caught:
        PipedriveHook("bad_dir").limiter  # noqa: B018
    _assert_names(caught.value, "bad_dir", "rate_limit_store")
    assert str(blocker) in str(caught.value)


def test_the_deployment_default_store_is_named_when_the_connection_sets_none(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CRM__RATE_LIMIT_STORE", f"redis://:{REDIS_PASSWORD}@127.0.0.1:{_free_port()}/0")
    _conn(monkeypatch, "default_store", "pipedrive", {})
    with pytest.raises(CrmConfigError) as caught:
        PipedriveHook("default_store").limiter  # noqa: B018
    _assert_names(caught.value, "default_store", "rate_limit_store")
    assert "[crm] rate_limit_store" in str(caught.value)
