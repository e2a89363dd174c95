"""PipedriveAsyncClient (httpx, HTTP mocked with ``respx``): every method, with the sync client's
retries and error naming: creates sent again only when safe, updates and deletes, searches, lists read
page by page, OAuth refresh with a rotated token handed to the host."""

from __future__ import annotations

import json

import httpx
import pytest
import respx
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_crm.clients.pipedrive.client import PipedriveAsyncClient
from airflow_provider_crm.clients.pipedrive.settings import PipedriveSettings, TokenRotation
from airflow_provider_crm.clients.pipedrive.transport import AsyncTransport
from airflow_provider_crm.common.errors import (
    CrmAuthError,
    CrmInputError,
    CrmNotFoundError,
    CrmTransientApiError,
)
from airflow_provider_crm.common.ratelimit.limiter import build_limiter
from airflow_provider_crm.common.writes import CrmCreateOutcomeUnknownError

BASE = "https://pd.test"
TOKEN = "tok-async-writes"
OAUTH_URL = "https://oauth.test/oauth/token"
FIELDS = {"success": True, "data": [
    {"field_code": "a" * 40, "field_name": "Tier", "field_type": "enum", "is_custom_field": True,
     "options": [{"id": 11, "label": "Gold"}, {"id": 12, "label": "Silver"}]},
    {"field_code": "name", "field_name": "Name", "field_type": "varchar", "is_custom_field": False},
], "additional_data": {"next_cursor": None}}
PERSON = {"id": 77, "name": "Ann", "emails": [{"value": "ann@example.com", "primary": True}]}
BAD_GATEWAY = {"success": False, "error": "bad gateway"}


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    monkeypatch.setattr("airflow_provider_crm.common.retry.DEFAULT_BACKOFF_INITIAL", 0.001)


def _client(name: str) -> PipedriveAsyncClient:
    """A client with a limiter of its own (``name``), so no test spends another's allowance."""
    s = PipedriveSettings(conn_id="pd_async", base_url=BASE, host_given=True, token=TOKEN)
    return PipedriveAsyncClient(AsyncTransport(s, build_limiter(s.policy(), name, store="memory"), timeout=5))


def _posts(mock: respx.MockRouter) -> int:
    return sum(1 for call in mock.calls if call.request.method == "POST")


async def test_a_create_encodes_custom_fields_and_spends_a_write():
    client = _client("create")
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{BASE}/api/v2/personFields").respond(json=FIELDS)
        post = mock.post(f"{BASE}/api/v2/persons").respond(json={"success": True, "data": PERSON})
        assert (await client.create("persons", {"name": "Ann", "Tier": "gold"}))["id"] == 77
    sent = post.calls.last.request
    assert json.loads(sent.content) == {"name": "Ann", "custom_fields": {"a" * 40: 11}}
    assert sent.headers["x-api-token"] == TOKEN and TOKEN not in str(sent.url)
    assert client.transport.limiter.quota_status()["daily POST/PUT allowance"]["used"] == 1


async def test_a_create_refused_with_429_is_sent_again_without_any_key():
    client = _client("429")
    with respx.mock() as mock:
        mock.get(f"{BASE}/api/v2/personFields").respond(json=FIELDS)
        mock.post(f"{BASE}/api/v2/persons").mock(side_effect=[
            httpx.Response(429, headers={"x-ratelimit-reset": "0.01"},
                           json={"success": False, "error": "request over limit", "errorCode": 429}),
            httpx.Response(200, json={"success": True, "data": PERSON})])
        assert (await client.create("persons", {"name": "Ann"}))["id"] == 77
        assert _posts(mock) == 2


async def test_a_create_with_a_lost_answer_and_no_key_is_not_sent_again():
    client = _client("lost")
    with respx.mock() as mock:
        mock.get(f"{BASE}/api/v2/personFields").respond(json=FIELDS)
        mock.post(f"{BASE}/api/v2/persons").respond(502, json=BAD_GATEWAY)
        with pytest.raises(CrmCreateOutcomeUnknownError, match="may have been created") as raised:
            await client.create("persons", {"name": "Ann"})
        assert _posts(mock) == 1
    assert isinstance(raised.value, AirflowFailException) and raised.value.status == 502


async def test_a_create_with_a_lost_answer_is_found_by_its_key_not_sent_again():
    client = _client("found")
    with respx.mock() as mock:
        mock.get(f"{BASE}/api/v2/personFields").respond(json=FIELDS)
        mock.post(f"{BASE}/api/v2/persons").respond(502, json=BAD_GATEWAY)
        search = mock.get(f"{BASE}/api/v2/persons/search").respond(
            json={"success": True, "data": {"items": [{"result_score": 1, "item": {"id": 77}}]}})
        mock.get(f"{BASE}/api/v2/persons/77").respond(json={"success": True, "data": PERSON})
        record = await client.create("persons", {"name": "Ann", "emails": [{"value": "Ann@example.com"}]},
                                     key_field="email")
        assert record["id"] == 77 and _posts(mock) == 1
    url = str(search.calls.last.request.url)
    assert "term=ann%40example.com" in url and "fields=email" in url


async def test_updates_patch_v2_and_put_v1_and_deletes_name_what_is_missing():
    client = _client("update")
    with respx.mock() as mock:
        mock.get(f"{BASE}/api/v2/dealFields").respond(json={"success": True, "data": []})
        patch = mock.patch(f"{BASE}/api/v2/deals/5").respond(json={"success": True, "data": {"id": 5}})
        put = mock.put(f"{BASE}/api/v1/notes/9").mock(side_effect=[
            httpx.Response(503, json={"success": False, "error": "unavailable"}),  # idempotent: retried
            httpx.Response(200, json={"success": True, "data": {"id": 9}})])
        mock.delete(f"{BASE}/api/v2/deals/6").respond(404, json={"success": False, "error": "Deal not found"})
        assert (await client.update("deals", 5, {"title": "Renamed"}))["id"] == 5
        assert (await client.update("notes", 9, {"content": "x"}))["id"] == 9
        with pytest.raises(CrmNotFoundError, match=r"DELETE /api/v2/deals/6: Deal not found"):
            await client.delete("deals", 6)
    assert json.loads(patch.calls.last.request.content) == {"title": "Renamed"} and put.call_count == 2
    with pytest.raises(CrmInputError, match="pipelines are read-only"):
        await client.create("pipelines", {"name": "P"})


async def test_a_write_that_keeps_failing_gives_up_with_the_sync_naming():
    client = _client("gives-up")
    with respx.mock() as mock:
        route = mock.put(f"{BASE}/api/v1/notes/9").respond(502, json=BAD_GATEWAY)
        with pytest.raises(CrmTransientApiError, match=r"PUT /api/v1/notes/9: bad gateway") as raised:
            await client.request("PUT", "v1", "/notes/9", json={"content": "x"})
    assert raised.value.status == 502 and route.call_count == 5  # common/retry.py's attempts


async def test_lists_are_read_page_by_page_and_offset_pages_overlap():
    client = _client("lists")
    ids = list(range(1, 61))

    def notes(request: httpx.Request) -> httpx.Response:
        start, limit = int(request.url.params.get("start", "0")), int(request.url.params["limit"])
        more = start + limit < len(ids)
        return httpx.Response(200, json={"success": True, "data": [{"id": i} for i in ids[start:start + limit]],
                                         "additional_data": {"pagination": {"more_items_in_collection": more,
                                                                            "next_start": start + limit}}})

    with respx.mock() as mock:
        mock.get(f"{BASE}/api/v1/mailbox/mailThreads").mock(side_effect=notes)
        mock.get(f"{BASE}/api/v2/persons/search").respond(
            json={"success": True, "data": {"items": [{"item": {"id": 1}}, {"item": {"id": 2}}]}})
        threads = [t["id"] async for t in client.iter_mail_threads("inbox")]
        found = await client.search("persons", "ann")
    assert threads == ids  # 50 a page, the second page starting 2 earlier: none twice
    assert [item["id"] for item in found] == [1, 2]


async def test_oauth_refresh_moves_to_the_api_domain_and_hands_the_rotated_token_over():
    kept: list[str] = []
    masked: list[str] = []
    s = PipedriveSettings(conn_id="pd_oauth_async", client_id="cid", client_secret="csecret", refresh_token="rt-conn",
                          oauth_token_url=OAUTH_URL)
    rotation = TokenRotation(load=lambda: None, save=kept.append, mask=masked.append, where="the test's list")
    client = PipedriveAsyncClient(AsyncTransport(s, build_limiter(s.policy(), "oauth-async", store="memory"),
                                                 rotation=rotation))
    with respx.mock() as mock:
        mock.post(OAUTH_URL).respond(json={"access_token": "at-1", "expires_in": 3600, "refresh_token": "rt-2",
                                           "api_domain": "https://acme.pipedrive.com"})
        deal = mock.get("https://acme.pipedrive.com/api/v2/deals/1").respond(json={"success": True, "data": {"id": 1}})
        assert (await client.get("deals", 1)) == {"id": 1}
    assert deal.calls.last.request.headers["Authorization"] == "Bearer at-1"
    assert kept == ["rt-2"] and {"at-1", "rt-2"} <= set(masked)
    refused = PipedriveAsyncClient(AsyncTransport(s, build_limiter(s.policy(), "oauth-refused", store="memory"),
                                                  rotation=rotation))
    with respx.mock() as mock:
        mock.post(OAUTH_URL).respond(400, json={"success": False, "message": "Invalid grant"})
        with pytest.raises(CrmAuthError, match="'pd_oauth_async'.*the test's list") as raised:
            await refused.get("deals", 1)
    assert "rt-conn" not in str(raised.value) and "csecret" not in str(raised.value)
