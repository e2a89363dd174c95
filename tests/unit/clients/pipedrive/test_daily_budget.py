"""Pipedrive's daily token budget when the connection's seat count is wrong (issue 15, item 10): the
limit and remaining the server states are the truth; the connection's numbers never refuse work or warn."""

from __future__ import annotations

import json
import logging

import pytest
import responses

from airflow_provider_crm.clients.pipedrive.policy import pipedrive_policy
from airflow_provider_crm.common.errors import CrmDailyBudgetExceededError
from airflow_provider_crm.common.ratelimit import stores
from airflow_provider_crm.common.ratelimit.limiter import build_limiter
from airflow_provider_crm.hooks.pipedrive import PipedriveHook

PD = "https://pd.test"
DEAL = {"success": True, "data": {"id": 1, "title": "Deal 1"}}


def _hook(monkeypatch, conn_id: str, **extra) -> PipedriveHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "pipedrive", "host": PD, "password": f"tok-{conn_id}",
        "extra": {"rate_limit_store": "memory", **extra}}))
    return PipedriveHook(conn_id)


def _answers(limit: int, remaining: int, count: int = 1, step: int = 1) -> None:
    for i in range(count):
        responses.get(f"{PD}/api/v2/deals/1", json=DEAL, headers={
            "x-daily-ratelimit-token-limit": str(limit),
            "x-daily-ratelimit-token-remaining": str(remaining - i * step)})


@pytest.fixture(autouse=True)
def _fresh_stores(monkeypatch):
    monkeypatch.setattr(stores, "_STORES", {})


@responses.activate
def test_too_many_seats_on_the_connection_do_not_make_a_fresh_day_look_spent(monkeypatch, caplog):
    """The issue's case: seats 50 (Ultimate: 10,500,000 a day) but Pipedrive says 1,050,000, 1,049,990 left."""
    hook = _hook(monkeypatch, "pd_seats50", plan="ultimate", seats=50)
    _answers(1_050_000, 1_049_990, count=3)
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        assert hook.get("deals", 1)["id"] == 1
    assert "daily token budget" not in caplog.text
    budget = hook.limiter.quota_status()["daily token budget"]
    assert budget["limit"] == 1_050_000 and budget["used"] < 100


@responses.activate
def test_too_few_seats_on_the_connection_never_refuse_what_pipedrive_still_allows(monkeypatch, caplog):
    """seats 1 on Lite gives 30,000 a day; the company's real budget is 1,050,000 with 1,000,000 left."""
    hook = _hook(monkeypatch, "pd_seats1", plan="lite", seats=1)
    hook.limiter.before_request(cost=20_000)  # earlier traffic of this day, counted by this limiter
    _answers(1_050_000, 1_000_000, count=2)
    caplog.set_level(logging.WARNING)
    assert hook.get("deals", 1)["id"] == 1
    hook.limiter.before_request(cost=15_000)  # 35,000 by the connection's numbers: more than "its" 30,000
    assert hook.get("deals", 1)["id"] == 1
    # another process sharing the store, before it has seen an answer of its own
    other = _hook(monkeypatch, "pd_seats1", plan="lite", seats=1)
    other.__dict__["limiter"] = build_limiter(pipedrive_policy("lite", seats=1), "tok-pd_seats1", store="memory")
    other.limiter.before_request(cost=10_000)
    assert other.limiter.quota_status()["daily token budget"]["limit"] == 1_050_000
    assert "daily token budget" not in caplog.text


@responses.activate
def test_the_stated_budget_still_refuses_when_pipedrive_says_it_is_spent(monkeypatch):
    hook = _hook(monkeypatch, "pd_spent", plan="ultimate", seats=50)
    _answers(1_050_000, 5)
    hook.get("deals", 1)
    with pytest.raises(CrmDailyBudgetExceededError, match="of 1050000 already used.*stated by pipedrive"):
        hook.limiter.before_request(cost=10)
