"""Issue 15, item 4: the window slot is claimed last, its time read when it commits, late claims retaken."""

from __future__ import annotations

import time

import pytest

from airflow_provider_crm.clients.pipedrive.policy import pipedrive_policy
from airflow_provider_crm.common.errors import CrmWaitTooLongError
from airflow_provider_crm.common.ratelimit.limiter import CLAIM_DEADLINE_S, build_limiter
from airflow_provider_crm.common.ratelimit.stores import get_store


def test_window_claim_is_the_last_store_write_before_the_request_leaves():
    limiter = build_limiter(pipedrive_policy("lite"), "claims-order", store="memory")
    order: list[str] = []
    store_add = limiter.store.add
    bucket = limiter._buckets["burst"]
    put = bucket.put_decision

    def add(key, amount, ttl):
        order.append("spend")
        return store_add(key, amount, ttl)

    def put_decision(item):
        order.append("claim")
        return put(item)

    limiter.store.add = add  # type: ignore[method-assign]
    bucket.put_decision = put_decision  # type: ignore[method-assign]
    limiter.before_request(kind="write", cost=5)
    # before issue 15 the two quota writes came after the claim: under load they held the request back
    # up to 300 ms while its slot was already ageing in our window
    assert order == ["spend", "spend", "claim"]


def test_request_that_waits_too_long_gives_its_quota_back():
    limiter = build_limiter(pipedrive_policy("lite"), "claims-refund", store="memory", max_wait=0.01)
    for _ in range(19):
        limiter.before_request(kind="write", cost=10)
    before = limiter.quota_status()
    with pytest.raises(CrmWaitTooLongError):
        limiter.before_request(kind="write", cost=10)
    assert limiter.quota_status() == before


def test_claim_committed_late_is_taken_again():
    limiter = build_limiter(pipedrive_policy("lite"), "claims-late", store="memory")
    bucket = limiter._buckets["burst"]
    put = bucket.put_decision
    calls = []

    def slow_first(item):
        calls.append(item.timestamp)
        if len(calls) == 1:
            time.sleep(CLAIM_DEADLINE_S * 3)  # descheduled between reading the time and committing
        return put(item)

    bucket.put_decision = slow_first  # type: ignore[method-assign]
    limiter.before_request()
    assert limiter.late_claims == 1
    assert len(calls) == 2 and calls[1] > calls[0]
    assert bucket.count() == 2  # the stale claim stays: it only errs on the safe side


def test_file_store_reads_the_claim_time_under_the_buckets_file_lock(tmp_path):
    limiter = build_limiter(pipedrive_policy("lite"), "claims-lock", store=f"file://{tmp_path}")
    bucket = limiter._buckets["burst"]
    assert get_store(f"file://{tmp_path}").claim_lock(bucket) is bucket.lock
    limiter.before_request()  # re-entrant: put() takes the same lock again
    assert bucket.count() == 1
