"""What is retried and what is not, and no duplicate after a create whose answer was lost."""

from __future__ import annotations

import pytest

from airflow_provider_crm.common.errors import (
    CrmAuthError,
    CrmNotFoundError,
    CrmRateLimitError,
    CrmTransientApiError,
    CrmValidationError,
    CrmWaitTooLongError,
)
from airflow_provider_crm.common.ratelimit.limiter import LimiterStats
from airflow_provider_crm.common.retry import call_with_retries

FAST = {"backoff_initial": 0.001, "backoff_max": 0.002}


def flaky(errors, result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


@pytest.mark.parametrize(
    "error",
    [
        CrmTransientApiError("boom", service="x", status=500),
        CrmTransientApiError("bad gateway", service="x", status=502),
        CrmTransientApiError("timed out", service="x"),
        CrmRateLimitError("slow down", service="x", status=429),
    ],
)
def test_transient_errors_on_reads_and_idempotent_writes_are_retried(error):
    fn, calls = flaky([error, error])
    stats = LimiterStats()
    assert call_with_retries(fn, idempotent=True, description="read", stats=stats, **FAST) == "ok"
    assert len(calls) == 3
    assert stats.waits == 2


@pytest.mark.parametrize(
    "error",
    [
        CrmValidationError("bad", service="x", status=400),
        CrmAuthError("who", service="x", status=401),
        CrmNotFoundError("gone", service="x", status=404),
        CrmValidationError("unprocessable", service="x", status=422),
        CrmWaitTooLongError("blocked", 300, 120),
    ],
)
def test_other_errors_are_never_retried(error):
    fn, calls = flaky([error])
    with pytest.raises(type(error)):
        call_with_retries(fn, idempotent=True, description="update", **FAST)
    assert len(calls) == 1


def test_retries_give_up_after_the_attempt_limit():
    error = CrmTransientApiError("down", service="x", status=500)
    fn, calls = flaky([error] * 10)
    with pytest.raises(CrmTransientApiError):
        call_with_retries(fn, idempotent=True, description="read", attempts=3, **FAST)
    assert len(calls) == 3


def test_create_without_lookup_is_not_retried():
    fn, calls = flaky([CrmTransientApiError("lost", service="x", status=502)])
    with pytest.raises(CrmTransientApiError):
        call_with_retries(fn, idempotent=False, description="create", **FAST)
    assert len(calls) == 1


def test_create_whose_answer_was_lost_is_found_not_duplicated():
    created = []

    def create():
        created.append({"id": 7})
        raise CrmTransientApiError("answer lost", service="x", status=502)

    def lookup():
        return created[0] if created else None

    assert call_with_retries(create, idempotent=False, lookup=lookup, description="create", **FAST) == {"id": 7}
    assert len(created) == 1


def test_create_that_did_not_land_is_retried_after_the_lookup():
    lookups = []
    fn, calls = flaky([CrmTransientApiError("refused", service="x", status=503)], result={"id": 8})

    def lookup():
        lookups.append(1)
        return None

    assert call_with_retries(fn, idempotent=False, lookup=lookup, description="create", **FAST) == {"id": 8}
    assert len(calls) == 2 and len(lookups) == 1


@pytest.mark.parametrize("error", [CrmRateLimitError("slow down", service="x", status=429),
                                   CrmTransientApiError("unavailable", service="x", status=503)])
def test_a_create_refused_before_it_ran_is_retried_even_without_a_lookup(error):
    """429 and 503 mean nothing was done: repeating the create cannot duplicate it (issue 15, items 3 and 9)."""
    fn, calls = flaky([error, error], result={"id": 9})
    assert call_with_retries(fn, idempotent=False, description="create", **FAST) == {"id": 9}
    assert len(calls) == 3


def test_no_lookup_after_a_429():
    lookups = []
    fn, calls = flaky([CrmRateLimitError("slow down", service="x", status=429)], result={"id": 10})

    def lookup():
        lookups.append(1)
        return None

    assert call_with_retries(fn, idempotent=False, lookup=lookup, description="create", **FAST) == {"id": 10}
    assert len(calls) == 2 and lookups == []


def test_refusals_do_not_use_up_the_attempts_but_the_wait_budget():
    fn, calls = flaky([CrmRateLimitError("slow down", service="x", status=429)] * 8)
    assert call_with_retries(fn, idempotent=True, description="read", attempts=3, max_wait=60, **FAST) == "ok"
    assert len(calls) == 9
    fn, calls = flaky([CrmRateLimitError("slow down", service="x", status=429)] * 1000)
    with pytest.raises(CrmWaitTooLongError):
        call_with_retries(fn, idempotent=True, description="read", max_wait=0.05, backoff_initial=0.01,
                          backoff_max=0.02)
