"""Retries that are safe: transient failures of reads and idempotent writes, creates only after a lookup.

The policy is tenacity's (``Retrying`` / ``AsyncRetrying``) with our own retry, wait and stop rules:

- Retried: ``CrmTransientApiError`` (5xx, dropped connections, timeouts, bodies cut short or not JSON)
  and ``CrmRateLimitError`` (after the limiter has recorded the block, so the next try waits it out).
- A request the service **refused before doing anything** (HTTP 429, or 503: see
  :func:`refused_before_work`) is waited out and repeated for as long as the task's rate-limit wait
  budget lasts (``[crm] max_rate_limit_wait``, 120 s by default), counted from the first attempt and
  including the limiter's own waits; past it, :class:`CrmWaitTooLongError` hands over to Airflow's task
  retry. Such refusals do not use up the attempts, and they are repeated even for a create without a
  lookup, which cannot have landed (after a 429 the lookup is skipped too; after a 503 a create's
  lookup still runs, as a cheap check).
- Other transient failures are tried ``attempts`` times in all, with full-jitter exponential backoff.
- Never retried: every other error (4xx, bad input, quota refusals, ``CrmWaitTooLongError``, which
  hands the wait to Airflow's task retry).
- A create (``idempotent=False``) whose answer may have been lost (a 502, a dropped connection) is
  retried only when ``lookup()`` shows the first attempt did not land; if it did land, the record
  ``lookup()`` found is returned and nothing is created twice. Without a ``lookup`` it is not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, wait_random_exponential

from airflow_provider_crm.common.errors import (
    CrmApiError,
    CrmInternalServerError,
    CrmRateLimitError,
    CrmTransientApiError,
    CrmWaitTooLongError,
)
from airflow_provider_crm.common.ratelimit.limiter import LimiterStats
from airflow_provider_crm.common.ratelimit.stores import default_max_wait

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ATTEMPTS = 5
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 20.0


def refused_before_work(error: BaseException | None) -> bool:
    """The service turned the request away before doing anything: HTTP 429 (or a rate-limit error in
    a GraphQL answer) and HTTP 503 Service Unavailable. Repeating it cannot duplicate anything."""
    if isinstance(error, CrmRateLimitError):
        return True
    return isinstance(error, CrmTransientApiError) and error.status == 503


class _Policy:
    """Retry, wait and stop rules of one call (see the module's docstring); tenacity runs them."""

    def __init__(self, description: str, stats: LimiterStats | None, attempts: int, initial: float,
                 maximum: float, max_wait: float | None, may_have_landed_ok: bool) -> None:
        self.description = description
        self.stats = stats
        self.attempts = attempts
        self._max_wait = max_wait
        self.may_have_landed_ok = may_have_landed_ok
        self.backoff = wait_random_exponential(multiplier=initial, max=maximum)  # full jitter
        self.failures = 0  # transient failures other than refusals
        self.last_error: BaseException | None = None

    @property
    def max_wait(self) -> float:
        if self._max_wait is None:
            self._max_wait = default_max_wait()  # read only when a refusal needs the budget
        return self._max_wait

    def retry(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        self.last_error = error
        if not isinstance(error, CrmTransientApiError):
            return False
        if refused_before_work(error):
            return True
        self.failures += 1
        if isinstance(error, CrmInternalServerError) and self.failures > 1:
            return False  # the service asks not to repeat it: one retry at most
        return self.may_have_landed_ok

    def wait(self, state: RetryCallState) -> float:
        wait = float(self.backoff(state))
        error = self.last_error
        if isinstance(error, CrmRateLimitError) and error.retry_after:
            wait = max(wait, float(error.retry_after))
        return wait

    def stop(self, state: RetryCallState) -> bool:
        if refused_before_work(self.last_error):
            spent = (state.seconds_since_start or 0.0) + (state.upcoming_sleep or 0.0)
            return spent > self.max_wait
        return self.failures >= self.attempts

    def before_sleep(self, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        if self.stats is not None:
            self.stats.note_wait(wait, "retry")
        log.warning("%s failed (attempt %d: %s); retrying in %.1fs", self.description, state.attempt_number,
                    self.last_error, wait)

    def give_up(self, state: RetryCallState) -> Any:
        error = self.last_error
        if refused_before_work(error):
            spent = (state.seconds_since_start or 0.0) + (state.upcoming_sleep or 0.0)
            status = error.status if isinstance(error, CrmApiError) else None
            raise CrmWaitTooLongError(
                f"{self.description} still refused (HTTP {status}) after {state.attempt_number} attempts", spent,
                self.max_wait) from error
        assert state.outcome is not None
        return state.outcome.result()  # raises the last error

    def kwargs(self) -> dict[str, Any]:
        return {"retry": self.retry, "wait": self.wait, "stop": self.stop, "before_sleep": self.before_sleep,
                "retry_error_callback": self.give_up}


def call_with_retries(
    fn: Callable[[], T],
    *,
    idempotent: bool,
    lookup: Callable[[], T | None] | None = None,
    description: str,
    stats: LimiterStats | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
    backoff_max: float = DEFAULT_BACKOFF_MAX,
    max_wait: float | None = None,
) -> T:
    """Call ``fn`` with retries that cannot duplicate work.

    :param fn: the request.
    :param idempotent: True for reads, updates, moves and deletes.
    :param lookup: for a create: finds the record an earlier attempt may have created, or None.
    :param description: names the request in log lines, e.g. ``"createCard in pipe 301"``.
    :param stats: the limiter's stats, to count retry waits.
    :param attempts: tries in all for transient failures other than refusals (429, 503).
    :param max_wait: seconds spent on refusals before giving up; default ``[crm] max_rate_limit_wait``.
    """
    policy = _Policy(description, stats, attempts, backoff_initial, backoff_max, max_wait,
                     may_have_landed_ok=idempotent or lookup is not None)
    check = False  # whether the previous attempt may have landed: look before repeating a create

    def attempt() -> T:
        nonlocal check
        if check and lookup is not None:
            found = lookup()
            if found is not None:
                log.info("%s: the previous attempt did land; not creating it again", description)
                return found
        try:
            return fn()
        except BaseException as err:
            check = not isinstance(err, CrmRateLimitError)
            raise

    return Retrying(**policy.kwargs())(attempt)


async def acall_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    lookup: Callable[[], Awaitable[T | None]] | None = None,
    description: str,
    **limits: Any,
) -> T:
    """The async twin of :func:`call_with_retries` (sleeps with asyncio); ``limits`` are its
    ``stats``, ``attempts``, ``backoff_initial``, ``backoff_max`` and ``max_wait``."""
    policy = _Policy(description, limits.get("stats"), limits.get("attempts", DEFAULT_ATTEMPTS),
                     limits.get("backoff_initial", DEFAULT_BACKOFF_INITIAL),
                     limits.get("backoff_max", DEFAULT_BACKOFF_MAX), limits.get("max_wait"),
                     may_have_landed_ok=idempotent or lookup is not None)
    check = False

    async def attempt() -> T:
        nonlocal check
        if check and lookup is not None:
            found = await lookup()
            if found is not None:
                log.info("%s: the previous attempt did land; not creating it again", description)
                return found
        try:
            return await fn()
        except BaseException as err:
            check = not isinstance(err, CrmRateLimitError)
            raise

    return await AsyncRetrying(**policy.kwargs())(attempt)  # type: ignore[no-any-return]
