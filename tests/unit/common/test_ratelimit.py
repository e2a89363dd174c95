"""The limiter: policies per plan, waits, blocks, quotas, budgets and header reconciliation."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from airflow_provider_crm.clients.pipedrive.policy import pipedrive_policy
from airflow_provider_crm.clients.pipefy.policy import pipefy_policy
from airflow_provider_crm.common.errors import (
    CrmConfigError,
    CrmDailyBudgetExceededError,
    CrmQuotaExceededError,
    CrmWaitTooLongError,
)
from airflow_provider_crm.common.ratelimit.limiter import build_limiter
from airflow_provider_crm.common.ratelimit.stores import get_store


@pytest.fixture
def file_store(tmp_path):
    return f"file://{tmp_path}"


def windows(limiter):
    return {w.name: (w.limit, w.seconds) for w in limiter.windows}


@pytest.mark.parametrize(
    ("plan", "auth", "burst"),
    [("lite", "token", 20), ("essential", "token", 20), ("growth", "oauth", 160), ("professional", "token", 100),
     ("ultimate", "oauth", 480)],
)
def test_pipedrive_burst_by_plan_and_auth_type_whole_window(plan, auth, burst):
    limiter = build_limiter(pipedrive_policy(plan, auth_type=auth), f"t-{plan}-{auth}", store="memory")
    assert windows(limiter)["burst"] == (burst, 2)
    assert windows(limiter)["search"] == (10, 2)
    kept = build_limiter(pipedrive_policy(plan, auth_type=auth, safety=0.95), f"t-{plan}-{auth}-95", store="memory")
    assert windows(kept)["burst"] == (int(burst * 0.95), 2)


def test_pipedrive_daily_budget_from_plan_and_seats():
    limiter = build_limiter(pipedrive_policy("premium", seats=3), "t-budget", store="memory")
    budget = {a.name: a.limit for a in limiter.allowances}
    assert budget["daily token budget"] == 30_000 * 5 * 3
    assert budget["daily POST/PUT allowance"] == 10_000
    oauth = build_limiter(pipedrive_policy("premium", auth_type="oauth"), "t-budget-oauth", store="memory")
    assert "daily POST/PUT allowance" not in {a.name for a in oauth.allowances}


def test_pipefy_window_and_quota_by_plan_and_overrides():
    limiter = build_limiter(pipefy_policy("business"), "t-pf", store="memory")
    assert windows(limiter)["requests"] == (475, 30)
    assert limiter.allowances[0].limit == 500
    limiter = build_limiter(pipefy_policy("business", overrides={"requests_per_30s": 100, "monthly_quota": 7}), "t-pf2", store="memory")
    assert windows(limiter)["requests"] == (95, 30)
    assert limiter.allowances[0].limit == 7


def test_unknown_plan_is_a_config_error():
    with pytest.raises(CrmConfigError, match="plan"):
        build_limiter(pipefy_policy("gold"), "t", store="memory")


def test_window_makes_callers_wait_and_counts_the_wait(caplog):
    limiter = build_limiter(pipedrive_policy("lite", overrides={"requests_per_2s": 4}, safety=1.0), "t-wait", store="memory")
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    for _ in range(6):
        with limiter.request():
            pass
    assert time.monotonic() - started >= 1.5  # two of six had to wait for the 2 s window
    assert limiter.stats.waits >= 1
    assert "waiting" in caplog.text and "burst: 4 per 2s" in caplog.text


def test_wait_longer_than_max_wait_raises_retryable():
    limiter = build_limiter(pipefy_policy(overrides={"requests_per_30s": 2}, safety=1.0), "t-long", store="memory", max_wait=1)
    limiter.before_request()
    limiter.before_request()
    with pytest.raises(CrmWaitTooLongError, match="longer than the 1s"):
        limiter.before_request()


def test_429_blocks_every_limiter_sharing_the_store(file_store):
    first = build_limiter(pipefy_policy(), "shared-token", store=file_store, max_wait=5)
    second = build_limiter(pipefy_policy(), "shared-token", store=file_store, max_wait=5)
    first.after_response(429, {})
    assert first.stats.rate_limited == 1
    with pytest.raises(CrmWaitTooLongError, match="paused: HTTP 429"):
        second.before_request()  # the 5-minute block exceeds max_wait: hand over to Airflow's retry
    other_token = build_limiter(pipefy_policy(), "another-token", store=file_store, max_wait=5)
    other_token.before_request()  # other tokens are not blocked


def test_monthly_quota_refuses_before_the_call_and_warns_at_80_percent(caplog, file_store):
    limiter = build_limiter(pipefy_policy("starter"), "t-quota", store=file_store)
    caplog.set_level(logging.WARNING)
    for _ in range(16):
        limiter.before_request()
    assert "monthly call quota: 16 of 20" in caplog.text
    with pytest.raises(CrmQuotaExceededError, match="needs about 10 calls but only 4 of 20"):
        limiter.check_quota(10)
    for _ in range(4):
        limiter.before_request()
    with pytest.raises(CrmQuotaExceededError, match="20 of 20 already used"):
        limiter.before_request()
    # a second process sees the same count
    assert build_limiter(pipefy_policy("starter"), "t-quota", store=file_store).quota_status()[
        "monthly call quota"]["used"] == 20


def test_pipedrive_budget_and_write_allowance_stop_calls_before_the_server(file_store):
    limiter = build_limiter(pipedrive_policy("lite", overrides={"daily_token_budget": 25}), "t-daily", store=file_store)
    limiter.before_request(cost=10)
    limiter.before_request(cost=10)
    with pytest.raises(CrmDailyBudgetExceededError, match="daily token budget: 20 of 25"):
        limiter.before_request(cost=10)
    limiter.before_request(cost=5)

    writes = build_limiter(pipedrive_policy("ultimate"), "t-writes", store=file_store)
    writes.after_response(200, {"x-daily-requests-left": "1"}, kind="write")
    writes.before_request(kind="write", cost=5)
    with pytest.raises(CrmDailyBudgetExceededError, match="POST/PUT"):
        writes.before_request(kind="write", cost=5)
    writes.before_request(kind="read", cost=1)  # reads are not POST/PUT


def test_headers_remaining_zero_pauses_for_the_relative_reset():
    limiter = build_limiter(pipedrive_policy("ultimate"), "t-hdr", store="memory", max_wait=0.5)
    limiter.after_response(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"})
    with pytest.raises(CrmWaitTooLongError, match=r"paused: .*x-ratelimit-remaining 0; no request was refused"):
        limiter.before_request()
    # one left: no pause, the limiter already paces us within the window
    nearly = build_limiter(pipedrive_policy("ultimate"), "t-hdr1", store="memory", max_wait=0.5)
    nearly.after_response(200, {"x-ratelimit-remaining": "1", "x-ratelimit-reset": "2"})
    nearly.before_request()
    assert nearly.stats.waits == 0
    # reset is relative seconds: an epoch-sized value must not be read as a date
    fresh = build_limiter(pipedrive_policy("ultimate"), "t-hdr2", store="memory", max_wait=120)
    fresh.after_response(200, {"x-ratelimit-remaining": "5", "x-ratelimit-reset": "1"})
    fresh.before_request()


def test_budget_header_reconciles_spend_from_other_clients(file_store):
    limiter = build_limiter(pipedrive_policy("lite", overrides={"daily_token_budget": 100}), "t-rec", store=file_store)
    limiter.after_response(200, {"x-daily-ratelimit-token-remaining": "5"})
    with pytest.raises(CrmDailyBudgetExceededError):
        limiter.before_request(cost=10)


def test_store_keys_never_hold_the_token(tmp_path):
    token = "very-secret-token-value"
    limiter = build_limiter(pipedrive_policy("lite"), token, store=f"file://{tmp_path}")
    limiter.before_request(cost=10)
    limiter.after_response(429, {"x-ratelimit-reset": "0.01"})
    for db in tmp_path.glob("*.sqlite"):
        con = sqlite3.connect(db)
        dump = "\n".join(con.iterdump())
        assert token not in dump
    assert token not in get_store(f"file://{tmp_path}").description


async def test_async_acquire_does_not_block_the_event_loop():
    import asyncio

    limiter = build_limiter(pipedrive_policy("lite", overrides={"requests_per_2s": 2}, safety=1.0), "t-async", store="memory")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    for _ in range(3):
        limiter.release(await limiter.before_request_async())
    task.cancel()
    assert limiter.stats.waits >= 1
    assert ticks >= 10  # the loop kept running while the third request waited ~2 s


def test_a_pause_says_its_real_reason():
    """x-ratelimit-remaining 0 pauses the token, but no 429 happened: the log must not say there was one."""
    limiter = build_limiter(pipedrive_policy(), "reason-token", store="memory")
    limiter.after_response(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"})
    wait, _, reason = limiter._try_windows("read")
    assert wait > 0 and "x-ratelimit-remaining 0" in reason and "429" not in reason
    limiter.after_response(429, {"retry-after": "3"})
    assert "HTTP 429" in limiter._try_windows("read")[2]
