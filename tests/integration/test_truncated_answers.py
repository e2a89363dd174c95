"""Answers cut short in transit (issue 15, item 1), with the sandbox's ``truncate`` fault: the status and
headers arrive with the full Content-Length, half of the body follows, then the connection closes."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests

from airflow_provider_crm.clients.pipedrive.transport import Call
from airflow_provider_crm.clients.pipefy.documents import ME
from airflow_provider_crm.common.errors import CrmTransientApiError
from airflow_provider_crm.hooks.pipedrive import PipedriveAsyncHook, PipedriveHook
from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator
from airflow_provider_crm.operators.pipefy import PipefyExportCardsOperator
from tests.integration.conftest import point_connections

pytestmark = pytest.mark.integration

PD_HEADERS = {"x-api-token": "sandbox-pipedrive-token"}


def _faults(server, *faults):
    requests.post(f"{server.url}/_sandbox/faults", json=list(faults), timeout=10).raise_for_status()


def _fault_counts(server) -> dict:
    return requests.get(f"{server.url}/_sandbox/counters", timeout=10).json()["faults"]


def _ids(path) -> list:
    return sorted(json.loads(line)["id"] for line in path.read_text().splitlines())


def test_the_truncate_fault_cuts_the_body_and_closes_the_connection(sandbox):
    url = f"{sandbox.url}/pipedrive/api/v2/deals/1"
    _faults(sandbox, {"service": "pipedrive", "mode": "truncate", "count": 1, "path_contains": "/deals/1"})
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, headers=PD_HEADERS, timeout=10)
    assert _fault_counts(sandbox) == {"pipedrive truncate": 1}
    assert requests.get(url, headers=PD_HEADERS, timeout=10).json()["data"]["id"] == 1  # the sandbox carries on


def test_a_truncated_answer_is_a_retryable_error_with_the_real_status(connections, sandbox):
    _faults(sandbox, {"service": "pipedrive", "mode": "truncate", "count": 1, "path_contains": "/deals/1"})
    with pytest.raises(CrmTransientApiError) as caught:
        PipedriveHook().client.transport.request_once(Call("GET", "v2", "/deals/1"))
    assert caught.value.status == 200 and "cut short" in str(caught.value)
    assert "sandbox-pipedrive-token" not in str(caught.value)


def test_truncated_answers_are_retried_in_the_task_sync_and_async(connections, sandbox):
    _faults(sandbox,
            {"service": "pipedrive", "mode": "truncate", "count": 2, "path_contains": "/deals/1"},
            {"service": "pipefy", "mode": "truncate", "count": 2})
    assert PipedriveHook().get("deals", 1)["id"] == 1
    assert asyncio.run(PipedriveAsyncHook().aget("deals", 1))["id"] == 1
    assert PipefyHook().execute(ME, description="me")["me"]["id"]
    assert _fault_counts(sandbox) == {"pipedrive truncate": 2, "pipefy truncate": 2}


def test_exports_complete_exactly_under_truncated_answers(make_sandbox, monkeypatch, context, tmp_path):
    """1 % of all answers cut short (a sandbox of its own), plus a few planned ones on the lists themselves."""
    server = make_sandbox(truncate_rate=0.01)
    point_connections(monkeypatch, server.info())
    live_deals = sorted(d["id"] for d in requests.get(f"{server.url}/pipedrive/_state/deals", timeout=10).json()
                        if not d.get("is_deleted") and not d.get("is_archived"))
    live_cards = sorted(c["id"] for c in requests.get(f"{server.url}/pipefy/_state", timeout=10).json()["cards"]
                        if str(c["pipe"]["id"]) == "301")
    assert len(live_deals) > 400 and len(live_cards) > 100
    _faults(server,
            {"service": "pipedrive", "mode": "truncate", "count": 2, "path_contains": "/api/v2/deals"},
            {"service": "pipedrive", "mode": "truncate", "count": 1, "path_contains": "dealFields"},
            {"service": "pipefy", "mode": "truncate", "count": 3})
    deals, cards = tmp_path / "deals.jsonl", tmp_path / "cards.jsonl"
    summary = PipedriveExportOperator(task_id="e", entity="deals", path=str(deals), full=True).execute(context())
    PipefyExportCardsOperator(task_id="e", pipe_id="301", path=str(cards), full=True).execute(context())

    counts = _fault_counts(server)
    assert counts.get("pipedrive truncate", 0) >= 3 and counts.get("pipefy truncate", 0) >= 3
    assert _ids(deals) == live_deals and summary["records"] == len(live_deals)
    assert _ids(cards) == live_cards
