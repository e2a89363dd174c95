"""The issue's own setting (issue 15, item 10), over HTTP: a connection saying ``seats: 50`` on Ultimate
(10,500,000 tokens a day) against a sandbox company of 5 seats (1,050,000, stated in its headers)."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_provider_crm.common.ratelimit import stores
from airflow_provider_crm.hooks.pipedrive import PipedriveHook
from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("seats", [50, 1])
def test_a_wrong_seat_count_neither_warns_nor_refuses(sandbox, monkeypatch, caplog, context, tmp_path, seats):
    monkeypatch.setattr(stores, "_STORES", {})
    monkeypatch.setenv("AIRFLOW_CONN_PIPEDRIVE_DEFAULT", json.dumps({
        "conn_type": "pipedrive", "host": sandbox.info()["pipedrive_url"], "password": "sandbox-pipedrive-token",
        "extra": {"rate_limit_store": "memory", "plan": "ultimate", "seats": seats}}))
    caplog.set_level(logging.INFO)
    summary = PipedriveExportOperator(task_id="e", entity="deals", path=str(tmp_path / "d.jsonl"), full=True).execute(
        context())
    assert summary["records"] > 0
    hook = PipedriveHook()
    hook.get("deals", 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [w for w in warnings if "daily token budget" in w]
    budget = hook.limiter.quota_status()["daily token budget"]
    assert budget["limit"] == 1_050_000 and budget["used"] < 1_000  # the sandbox's company: Ultimate, 5 seats
    assert "states a daily token budget of 1050000" in caplog.text
