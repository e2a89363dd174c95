"""A 429 (or a 503: nothing was done) is waited out and retried within ``max_rate_limit_wait`` (issue 15,
item 9: the in-task retry gave up after five attempts, about 12 s, although the budget is 120 s).

Time is simulated: ``time.sleep`` and ``asyncio.sleep`` advance a clock that ``time.time`` and
``time.monotonic`` read, so the tests wait minutes of API time in milliseconds and assert nothing about
real time."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time

import httpx
import pytest
import responses
import respx

from airflow_provider_crm.common.errors import CrmRetryableError, CrmWaitTooLongError
from airflow_provider_crm.common.ratelimit import stores
from airflow_provider_crm.common.ratelimit.stores import DEFAULT_MAX_WAIT
from airflow_provider_crm.hooks.pipedrive import PipedriveAsyncHook, PipedriveHook

PD = "https://pd.test"
DEAL = {"success": True, "data": {"id": 1, "title": "Deal 1"}}
OVER = {"success": False, "error": "request over limit", "errorCode": 429}
RESET = {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "10"}


class FakeClock:
    """Simulated time for the test's own thread. Other threads (a sandbox server another test left
    running, say) keep real sleeps: their ticks must neither advance this clock nor spin."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        self.owner = threading.get_ident()
        real_time, real_monotonic, real_sleep, real_asleep = time.time, time.monotonic, time.sleep, asyncio.sleep
        monkeypatch.setattr(time, "time", lambda: real_time() + self.offset)
        monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + self.offset)

        def sleep(seconds: float) -> None:
            if threading.get_ident() == self.owner:
                self.offset += max(0.0, seconds)
            else:
                real_sleep(seconds)

        async def asleep(seconds: float, result: object = None) -> object:
            if threading.get_ident() != self.owner:
                return await real_asleep(seconds, result)
            self.offset += max(0.0, seconds)
            return await real_asleep(0, result)

        monkeypatch.setattr(time, "sleep", sleep)
        monkeypatch.setattr(asyncio, "sleep", asleep)


@pytest.fixture
def clock(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PD", json.dumps({
        "conn_type": "pipedrive", "host": PD, "password": "tok-429", "extra": {"rate_limit_store": "memory"}}))
    monkeypatch.setattr(stores, "_STORES", {})  # blocks of earlier tests were set on another clock
    random.seed(1)  # the backoff's jitter, the same whatever ran before
    return FakeClock(monkeypatch)


@responses.activate
def test_a_429_is_waited_out_and_retried_past_five_attempts(clock):
    for _ in range(9):  # 9 refusals with a 10 s reset each: 90 s, within the 120 s budget
        responses.get(f"{PD}/api/v2/deals/1", status=429, json=OVER, headers=RESET)
    responses.get(f"{PD}/api/v2/deals/1", json=DEAL)
    assert PipedriveHook("pd").get("deals", 1) == DEAL["data"]
    assert len(responses.calls) == 10 and clock.offset >= 85  # nine 10 s resets, less the real time that passed meanwhile


@responses.activate
def test_refusals_give_up_only_when_the_wait_budget_is_spent(clock):
    responses.get(f"{PD}/api/v2/deals/1", status=429, json=OVER, headers=RESET)
    with pytest.raises(CrmWaitTooLongError) as caught:
        PipedriveHook("pd").get("deals", 1)
    assert isinstance(caught.value, CrmRetryableError)  # Airflow's task retry takes over from here
    # it stops when the next wait (a 10 s reset, with jitter) would pass the budget, not before
    assert DEFAULT_MAX_WAIT - 25 <= clock.offset <= DEFAULT_MAX_WAIT + 15
    assert len(responses.calls) > 5


@responses.activate
def test_a_503_is_retried_within_the_budget_not_the_attempt_count(clock):
    for _ in range(8):
        responses.get(f"{PD}/api/v2/deals/1", status=503, json={"success": False, "error": "unavailable"},
                      headers={"retry-after": "5"})
    responses.get(f"{PD}/api/v2/deals/1", json=DEAL)
    assert PipedriveHook("pd").get("deals", 1) == DEAL["data"]
    assert len(responses.calls) == 9


async def test_the_async_path_waits_out_429s_within_the_budget_too(clock):
    answers = [httpx.Response(429, json=OVER, headers=RESET)] * 9 + [httpx.Response(200, json=DEAL)]
    with respx.mock() as mock:
        route = mock.get(f"{PD}/api/v2/deals/1").mock(side_effect=answers)
        assert await PipedriveAsyncHook("pd").aget("deals", 1) == DEAL["data"]
    assert route.call_count == 10 and clock.offset >= 85  # nine 10 s resets, less the real time that passed meanwhile
