"""Retries that are safe: transient failures of reads and idempotent writes, creates only after a lookup.

- Retried: ``CrmTransientApiError`` (5xx, dropped connections, timeouts) and ``CrmRateLimitError``
  (after the limiter has recorded the block, so the next try waits it out).
- Never retried: every other error (4xx, bad input, quota refusals, ``CrmWaitTooLongError``, which
  hands the wait to Airflow's task retry).
- A create (``idempotent=False``) is retried only when ``lookup()`` shows the first attempt did not
  land; if it did land, the record ``lookup()`` found is returned and nothing is created twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from airflow_provider_crm.common.errors import CrmTransientApiError
from airflow_provider_crm.common.ratelimit import LimiterStats

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ATTEMPTS = 5
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 20.0


def _log_retry(description: str, stats: LimiterStats | None) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if stats is not None:
            stats.note_wait(wait, "retry")
        log.warning("%s failed (attempt %d: %s); retrying in %.1fs", description, state.attempt_number, error, wait)

    return before_sleep


def _retrying(description: str, stats: LimiterStats | None, attempts: int, initial: float, maximum: float,
              cls: type = Retrying) -> Retrying:
    return cls(
        retry=retry_if_exception_type(CrmTransientApiError),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=initial, max=maximum),  # full jitter
        before_sleep=_log_retry(description, stats),
        reraise=True,
    )


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
) -> T:
    """Call ``fn`` with retries that cannot duplicate work.

    :param fn: the request.
    :param idempotent: True for reads, updates, moves and deletes.
    :param lookup: for a create: finds the record an earlier attempt may have created, or None.
    :param description: names the request in log lines, e.g. ``"createCard in pipe 301"``.
    :param stats: the limiter's stats, to count retry waits.
    """
    if idempotent:
        return _retrying(description, stats, attempts, backoff_initial, backoff_max)(fn)
    if lookup is None:
        return fn()  # a create without a way to check it landed: never retried

    first = True

    def attempt() -> T:
        nonlocal first
        if not first:
            found = lookup()
            if found is not None:
                log.info("%s: the previous attempt did land; not creating it again", description)
                return found
        first = False
        return fn()

    return _retrying(description, stats, attempts, backoff_initial, backoff_max)(attempt)


async def acall_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    lookup: Callable[[], Awaitable[T | None]] | None = None,
    description: str,
    stats: LimiterStats | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
    backoff_max: float = DEFAULT_BACKOFF_MAX,
) -> T:
    """The async twin of :func:`call_with_retries` (sleeps with asyncio)."""
    if not idempotent and lookup is None:
        return await fn()
    first = True

    async def attempt() -> T:
        nonlocal first
        if not first and lookup is not None:
            found = await lookup()
            if found is not None:
                return found
        first = False
        return await fn()

    retrying = _retrying(description, stats, attempts, backoff_initial, backoff_max, cls=AsyncRetrying)
    return await retrying(attempt)  # type: ignore[misc]
