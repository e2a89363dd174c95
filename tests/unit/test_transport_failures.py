"""Transport failures (issue 15, item 1): a body cut short, an undecodable body, a reset or a timeout,
sync (requests) and async (httpx), become retryable ``Crm*`` errors and are retried in the task."""

from __future__ import annotations

import json

import httpx
import pytest
import requests
import responses
import respx
import urllib3

from airflow_provider_crm.clients.pipedrive.transport import Call
from airflow_provider_crm.clients.pipefy.documents import ME
from airflow_provider_crm.common import http
from airflow_provider_crm.common.errors import CrmRateLimitError, CrmTransientApiError
from airflow_provider_crm.hooks.pipedrive import PipedriveAsyncHook, PipedriveHook
from airflow_provider_crm.hooks.pipefy import PipefyAsyncHook, PipefyHook

PD = "https://pd.test"
PF = "https://pipefy.test/graphql"
SECRET = "tok-secret-transport"
DEAL = {"success": True, "data": {"id": 1, "title": "Deal 1"}}
ME_ANSWER = {"data": {"me": {"id": "7", "name": "Ops", "email": "ops@acme.com"}}}


@pytest.fixture(autouse=True)
def _connections(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PD", json.dumps({
        "conn_type": "pipedrive", "host": PD, "password": SECRET, "extra": {"rate_limit_store": "memory"}}))
    monkeypatch.setenv("AIRFLOW_CONN_PF", json.dumps({
        "conn_type": "pipefy", "host": PF, "password": SECRET, "extra": {"rate_limit_store": "memory"}}))
    # retries back off for real: keep them short
    monkeypatch.setattr("airflow_provider_crm.common.retry.DEFAULT_BACKOFF_INITIAL", 0.001)


SYNC_FAILURES = [
    requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(10 bytes read, 90 more expected)"),
    requests.exceptions.ContentDecodingError("Received response with content-encoding: gzip, but failed to decode"),
    requests.exceptions.ConnectionError("Connection reset by peer"),
    requests.exceptions.ReadTimeout("Read timed out."),
]


@pytest.mark.parametrize("failure", SYNC_FAILURES, ids=lambda e: type(e).__name__)
@responses.activate
def test_pipedrive_read_is_retried_after_a_transport_failure(failure):
    responses.get(f"{PD}/api/v2/deals/1", body=failure)
    responses.get(f"{PD}/api/v2/deals/1", json=DEAL)
    assert PipedriveHook("pd").get("deals", 1) == DEAL["data"]
    assert len(responses.calls) == 2


@pytest.mark.parametrize("failure", SYNC_FAILURES, ids=lambda e: type(e).__name__)
@responses.activate
def test_pipedrive_transport_failure_is_a_retryable_crm_error_without_the_token(failure):
    responses.get(f"{PD}/api/v2/deals/1", body=failure)
    with pytest.raises(CrmTransientApiError) as caught:
        PipedriveHook("pd").client.transport.request_once(Call("GET", "v2", "/deals/1"))
    assert type(failure).__name__ in str(caught.value) and SECRET not in str(caught.value)


@pytest.mark.parametrize("failure", SYNC_FAILURES, ids=lambda e: type(e).__name__)
@responses.activate
def test_pipefy_read_is_retried_after_a_transport_failure(failure):
    responses.post(PF, body=failure)
    responses.post(PF, json=ME_ANSWER)
    assert PipefyHook("pf").execute(ME, description="me")["me"]["id"] == "7"
    assert len(responses.calls) == 2


@pytest.mark.parametrize("body", ['{"success": true, "data": {"id": 1, "tit', ""], ids=["cut-json", "empty"])
@responses.activate
def test_an_invalid_json_body_is_retryable_with_its_real_status(body):
    responses.get(f"{PD}/api/v2/deals/1", body=body, status=200, content_type="application/json")
    with pytest.raises(CrmTransientApiError) as caught:
        PipedriveHook("pd").client.transport.request_once(Call("GET", "v2", "/deals/1"))
    assert caught.value.status == 200 and "JSON" in str(caught.value) and "502" not in str(caught.value)


ASYNC_FAILURES = [
    httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    httpx.ReadError("Connection reset by peer"),
    httpx.DecodingError("Error -3 while decompressing data"),
    httpx.ReadTimeout("timed out"),
]


@pytest.mark.parametrize("failure", ASYNC_FAILURES, ids=lambda e: type(e).__name__)
async def test_pipedrive_async_read_is_retried_after_a_transport_failure(failure):
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(f"{PD}/api/v2/deals/1").mock(side_effect=[failure, httpx.Response(200, json=DEAL)])
        assert await PipedriveAsyncHook("pd").aget("deals", 1) == DEAL["data"]
    assert route.call_count == 2


@pytest.mark.parametrize("failure", ASYNC_FAILURES, ids=lambda e: type(e).__name__)
async def test_pipefy_async_read_is_retried_after_a_transport_failure(failure):
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(PF).mock(side_effect=[failure, httpx.Response(200, json=ME_ANSWER)])
        assert (await PipefyAsyncHook("pf").aexecute(ME))["me"]["id"] == "7"
    assert route.call_count == 2


async def test_async_transport_failure_is_a_retryable_crm_error():
    with respx.mock() as mock:
        mock.get(f"{PD}/api/v2/deals/1").mock(side_effect=httpx.DecodingError("Error -3 while decompressing data"))
        with pytest.raises(CrmTransientApiError) as caught:
            await (await PipedriveAsyncHook("pd").aclient()).transport.request_once(Call("GET", "v2", "/deals/1"))
    assert "DecodingError" in str(caught.value) and SECRET not in str(caught.value)


HTML = "<!DOCTYPE html><html><head><title>Maintenance</title></head><body>Back soon</body></html>"


@responses.activate
def test_an_html_page_answered_with_200_is_reported_as_html_with_its_real_status():
    """Issue 15, item 6: it was reported as "HTTP 502"."""
    responses.get(f"{PD}/api/v2/deals/1", body=HTML, status=200, content_type="text/html")
    with pytest.raises(CrmTransientApiError) as caught:
        PipedriveHook("pd").client.transport.request_once(Call("GET", "v2", "/deals/1"))
    assert caught.value.status == 200 and "HTML page, not JSON" in str(caught.value)
    assert "502" not in str(caught.value) and "Maintenance" not in str(caught.value)


@responses.activate
def test_pipefy_html_page_is_reported_as_html_with_its_real_status():
    responses.post(PF, body=HTML, status=200, content_type="text/html")
    with pytest.raises(CrmTransientApiError) as caught:
        PipefyHook("pf").client.post_once(ME, {}, "read")
    assert caught.value.status == 200 and "HTML page, not JSON" in str(caught.value)


@responses.activate
def test_an_html_error_page_keeps_its_status_and_says_it_was_html():
    responses.get(f"{PD}/api/v2/deals/1", body=HTML, status=403, content_type="text/html")
    with pytest.raises(Exception) as caught:
        PipedriveHook("pd").client.transport.request_once(Call("GET", "v2", "/deals/1"))
    assert "HTTP 403" in str(caught.value) and "HTML page" in str(caught.value)


async def test_async_html_page_is_reported_as_html_with_its_real_status():
    with respx.mock() as mock:
        mock.get(f"{PD}/api/v2/deals/1").mock(return_value=httpx.Response(200, text=HTML,
                                                                          headers={"content-type": "text/html"}))
        with pytest.raises(CrmTransientApiError) as caught:
            await (await PipedriveAsyncHook("pd").aclient()).transport.request_once(Call("GET", "v2", "/deals/1"))
    assert caught.value.status == 200 and "HTML page, not JSON" in str(caught.value)


class _CutShortRaw:
    """urllib3's side of an answer whose body breaks off after the headers."""

    def stream(self, chunk_size, decode_content=True):
        yield b'{"success": fal'
        raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(15 bytes read, 40 more expected)")

    def release_conn(self):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("status,cls", [(200, CrmTransientApiError), (429, CrmRateLimitError)])
def test_a_body_cut_short_keeps_the_answers_status_and_a_429_stays_a_rate_limit(status, cls):
    resp = requests.Response()
    resp.status_code, resp.raw = status, _CutShortRaw()
    with pytest.raises(cls) as caught:
        http.read_body(resp, what="GET /api/v2/deals", service="pipedrive")
    assert caught.value.status == status and "ChunkedEncodingError" in str(caught.value)
