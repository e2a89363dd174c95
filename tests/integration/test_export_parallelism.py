"""Exports choose how many requests to keep in flight from the plan's rate and the latency they measure
(issue 18): more than one where the plan allows it, one where it does not, and the same records either way."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_provider_crm.clients.pipedrive.export_lines import spare_processes
from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator


@pytest.fixture(scope="module")
def slow_sandbox():
    from crm_sandbox.core import SandboxConfig
    from crm_sandbox.server import SandboxServer

    # answers take 100 ms, as a real API's do at least
    with SandboxServer(SandboxConfig(latency_ms=100, pipedrive_deals=3000)) as server:
        yield server


def _connection(monkeypatch, info: dict, **extra: object) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_PIPEDRIVE_DEFAULT", json.dumps({
        "conn_type": "pipedrive", "host": info["pipedrive_url"], "password": "sandbox-pipedrive-token",
        "extra": {"rate_limit_store": "memory", "seats": 5, **extra}}))


def _by_id(path) -> dict[int, dict]:
    return {record["id"]: record for record in map(json.loads, path.read_text().splitlines())}


def test_a_full_export_keeps_several_requests_in_flight_where_the_plan_allows(slow_sandbox, monkeypatch, context,
                                                                              tmp_path, caplog):
    caplog.set_level(logging.INFO)
    _connection(monkeypatch, slow_sandbox.info(), plan="ultimate")  # 114 requests per 2 s
    summary = PipedriveExportOperator(task_id="e", entity="deals", path=str(tmp_path / "d.jsonl")).execute(context())
    assert summary["range"]["case"] == "first_full"  # a first run without an interval: everything
    assert summary["parallel"] > 1
    # on a plan this fast the pages are encoded in a worker process, where a core is spare
    assert ("Encoding export pages in 1 worker process" in caplog.text) == (spare_processes() > 0)
    # one reader, its pages encoded in this process: the same records, byte for byte once decoded
    # (custom fields by name, labels), nothing lost or repeated at the slices' edges
    _connection(monkeypatch, slow_sandbox.info(), plan="ultimate")
    one = PipedriveExportOperator(task_id="e1", entity="deals", path=str(tmp_path / "one.jsonl"),
                                  slices=1).execute(context())
    assert one["parallel"] == 1
    parallel, single = _by_id(tmp_path / "d.jsonl"), _by_id(tmp_path / "one.jsonl")
    assert len(parallel) == one["records"] == summary["records"] == len((tmp_path / "d.jsonl").read_text().splitlines())
    assert parallel == single


def test_one_request_in_flight_where_the_plan_allows_no_more(slow_sandbox, monkeypatch, context, tmp_path):
    # 4 requests per 2 s: one request at a time (100 ms each) already outpaces the plan
    _connection(monkeypatch, slow_sandbox.info(), plan="lite", requests_per_2s=4)
    summary = PipedriveExportOperator(task_id="e", entity="deals", path=str(tmp_path / "d.jsonl")).execute(context())
    assert summary["parallel"] == 1
    assert summary["records"] > 0


def test_a_whole_pipe_export_reads_its_phases_side_by_side(slow_sandbox, monkeypatch, context, tmp_path):
    from airflow_provider_crm.hooks.pipefy import PipefyHook
    from airflow_provider_crm.operators.pipefy import PipefyExportCardsOperator

    monkeypatch.setenv("AIRFLOW_CONN_PIPEFY_DEFAULT", json.dumps({
        "conn_type": "pipefy", "host": slow_sandbox.info()["pipefy_url"], "password": "sandbox-pipefy-token",
        "extra": {"rate_limit_store": "memory"}}))
    path = tmp_path / "cards.jsonl"
    summary = PipefyExportCardsOperator(task_id="c", pipe_id="301", path=str(path)).execute(context())
    assert summary["parallel"] > 1
    # the same cards as one filtered allCards stream over the same range
    stream = {str(card["id"]) for card in PipefyHook().iter_pipe_cards("301")}
    assert sorted(json.loads(line)["id"] for line in path.read_text().splitlines()) == sorted(stream)
