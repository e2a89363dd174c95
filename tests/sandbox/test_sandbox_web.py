"""The sandbox's read-only web pages: every extra link the provider builds for a connection pointed at
the sandbox opens a page (200) that names what the link is about; unknown ids are 404 pages."""

from __future__ import annotations

import html
import re

import pytest
import requests

from airflow_provider_crm.hooks.pipedrive import WEB_LISTS, PipedriveHook
from airflow_provider_crm.hooks.pipefy import PipefyHook
from tests.integration.conftest import point_connections

pytestmark = pytest.mark.integration
PD = {"x-api-token": "sandbox-pipedrive-token"}


def _get(url: str) -> requests.Response:
    answer = requests.get(url, timeout=10)
    assert answer.headers["content-type"].startswith("text/html"), url
    return answer


def _text(page: str) -> str:
    """What a person reads: the page without its style and tags, entities decoded."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_pipefy_links_open_pages(monkeypatch, sandbox):
    point_connections(monkeypatch, sandbox.info())
    hook = PipefyHook()
    state = requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()
    pipe = state["pipes"][0]
    card = next(c for c in state["cards"] if c["pipe"]["id"] == pipe["id"])
    table = state["tables"][0]

    page = _get(hook.pipe_url(pipe["id"]))
    assert page.status_code == 200
    text = _text(page.text)
    assert pipe["name"] in text and f"{pipe['cards_count']} cards" in text
    assert card["title"] in text  # the pipe page lists its cards, linked

    page = _get(hook.card_url(card["id"]))
    assert page.status_code == 200
    text = _text(page.text)
    assert card["title"] in text and card["current_phase"]["name"] in text and pipe["name"] in text

    page = _get(hook.table_url(table["id"]))
    assert page.status_code == 200
    records = [r for r in state["records"] if r["table_id"] == table["id"]]
    assert table["name"] in _text(page.text) and f"{len(records)} records" in _text(page.text)

    assert _get(hook.card_url("999999999")).status_code == 404
    assert _get(hook.pipe_url("999999999")).status_code == 404


def test_pipedrive_links_open_pages(monkeypatch, sandbox):
    point_connections(monkeypatch, sandbox.info())
    hook = PipedriveHook()
    assert hook.web_url == sandbox.info()["pipedrive_url"]
    for entity in ("deals", "persons", "organizations"):
        records = requests.get(f"{sandbox.url}/pipedrive/_state/{entity}", timeout=10).json()
        live = [r for r in records if not r.get("is_deleted")]
        page = _get(hook.list_url(entity))
        assert page.status_code == 200, entity
        text = _text(page.text)
        assert f"{len(live)} {entity}" in text
        newest = live[-1]
        assert str(newest.get("title") or newest.get("name")) in text
        # the list links to each record's page
        record_url = hook.record_url(entity, newest["id"])
        assert record_url.removeprefix(hook.web_url) in page.text.replace("../", "/")
        page = _get(record_url)
        assert page.status_code == 200, record_url
        assert str(newest.get("title") or newest.get("name")) in _text(page.text)
    assert _get(hook.record_url("deals", 99_999_999)).status_code == 404
    for entity in WEB_LISTS:
        assert _get(hook.list_url(entity)).status_code == 200, entity


def test_pages_show_writes_and_are_not_api_traffic(monkeypatch, sandbox):
    """A record created through the API shows on its page at once; pages cost no API requests."""
    point_connections(monkeypatch, sandbox.info())
    hook = PipedriveHook()
    created = requests.post(f"{sandbox.url}/pipedrive/api/v2/persons", json={"name": "Ada <Lovelace>"},
                            headers=PD, timeout=10).json()["data"]
    before = requests.get(f"{sandbox.url}/_sandbox/counters", timeout=10).json()["requests"]
    page = _get(hook.record_url("persons", created["id"]))
    assert "Ada &lt;Lovelace&gt;" in page.text  # escaped, shown as typed
    assert "Ada <Lovelace>" in _text(page.text)
    assert "Ada &lt;Lovelace&gt;" in _get(hook.list_url("persons")).text
    assert requests.get(f"{sandbox.url}/_sandbox/counters", timeout=10).json()["requests"] == before
