"""PipefyClient / PipefyAsyncClient with HTTP mocked: the service-account token fetched once under
concurrency (sync threads and async coroutines), create_comment's retries and error naming."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import responses
import respx

from airflow_provider_crm.clients.pipefy.client import PipefyAsyncClient, PipefyClient, build_pipefy_limiter
from airflow_provider_crm.clients.pipefy.documents import ME
from airflow_provider_crm.clients.pipefy.settings import PipefySettings
from airflow_provider_crm.common.errors import CrmPermissionError
from airflow_provider_crm.common.writes import CrmCreateOutcomeUnknownError

URL = "https://pf.test/graphql"
TOKEN_URL = "https://pf.test/oauth/token"
ME_ANSWER = {"data": {"me": {"id": "7", "email": "sa@acme.com"}}}
SA = PipefySettings(conn_id="pf", api_url=URL, client_id="sa", client_secret="secret-xyz",
                    oauth_token_url=TOKEN_URL, rate_limit_store="memory")
PAT = PipefySettings(conn_id="pf", api_url=URL, token="tok-123", rate_limit_store="memory")


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr("airflow_provider_crm.common.retry.DEFAULT_BACKOFF_INITIAL", 0.001)


def test_sync_threads_fetch_one_service_account_token():
    fetched: list[str] = []
    masked: list[str] = []
    with responses.RequestsMock() as mock:
        def token(request):
            fetched.append(threading.current_thread().name)
            return 200, {}, json.dumps({"access_token": "sa-access", "expires_in": 3600})

        mock.add_callback(responses.POST, TOKEN_URL, callback=token)
        mock.post(URL, json=ME_ANSWER)
        client = PipefyClient(SA, build_pipefy_limiter(SA), on_secret=masked.append)
        with ThreadPoolExecutor(8) as pool:
            assert all(me["id"] == "7" for me in pool.map(lambda _: client.me(), range(8)))
        assert len(fetched) == 1 and masked == ["sa-access"]
        assert {c.request.headers.get("Authorization") for c in mock.calls if c.request.url == URL} == {
            "Bearer sa-access"}


async def test_async_coroutines_fetch_one_service_account_token_and_refresh_once_on_401():
    client = PipefyAsyncClient(SA, build_pipefy_limiter(SA))
    with respx.mock(assert_all_called=True) as mock:
        tokens = mock.post(TOKEN_URL).mock(side_effect=[
            httpx.Response(200, json={"access_token": "first", "expires_in": 3600}),
            httpx.Response(200, json={"access_token": "second", "expires_in": 3600})])
        api = mock.post(URL).mock(return_value=httpx.Response(200, json=ME_ANSWER))
        results = await asyncio.gather(*(client.aexecute(ME) for _ in range(10)))
        assert all(r["me"]["id"] == "7" for r in results)
        assert tokens.call_count == 1  # ten coroutines, one fetch under the loop's lock
        api.mock(side_effect=[httpx.Response(401, json={"errors": [{"message": "Unauthorized"}]}),
                              httpx.Response(200, json=ME_ANSWER)])
        assert (await client.aexecute(ME))["me"]["id"] == "7"
        assert tokens.call_count == 2 and api.calls[-1].request.headers["Authorization"] == "Bearer second"


async def test_async_client_names_its_errors():
    client = PipefyAsyncClient(PAT, build_pipefy_limiter(PAT))
    with respx.mock() as mock:
        mock.post(URL).mock(return_value=httpx.Response(200, json={"error": {
            "message": "Permission denied", "details": {"code": "PERMISSION_DENIED", "correlation_id": "c-9"}}}))
        with pytest.raises(CrmPermissionError, match="card 5: Permission denied") as caught:
            await client.aget_card("5")
    assert caught.value.correlation_id == "c-9"


def test_create_comment_is_repeated_after_a_refusal_but_never_after_a_lost_answer():
    client = PipefyClient(PAT, build_pipefy_limiter(PAT))
    with responses.RequestsMock() as mock:
        mock.post(URL, status=503, body="busy")  # refused before it ran: safe to send again
        mock.post(URL, json={"data": {"createComment": {"comment": {"id": "c1"}}}})
        assert client.create_comment("9", "hello")["id"] == "c1"
        assert len(mock.calls) == 2
    with responses.RequestsMock() as mock:
        mock.post(URL, status=502, body="bad gateway")  # may have landed, and a comment cannot be looked up
        with pytest.raises(CrmCreateOutcomeUnknownError, match="createComment on card 9") as caught:
            client.create_comment("9", "hello")
        assert len(mock.calls) == 1 and caught.value.status == 502
