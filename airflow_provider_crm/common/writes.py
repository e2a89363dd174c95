"""Writes that never land twice: creates retried only when that is safe, one create per key.

A create has no idempotency key on either service, so a retry is safe only when we know the first
attempt did not land:

- refused before it ran (HTTP 429, HTTP 503, a rate-limit error in a GraphQL answer): nothing was
  done, so it is sent again, within the retry budget (the limiter waits out the block first);
- any other transient failure (a 5xx, a lost or cut answer, a timeout) leaves it unknown: with a
  ``lookup`` it is retried only after the lookup finds nothing, and a record the lookup finds is the
  result; without one it is not sent again, and :class:`CrmCreateOutcomeUnknownError` (not
  retryable) tells Airflow not to send it again either.

:func:`create_once` adds the claim (common/claims.py) that keeps concurrent writers of one key apart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from airflow_provider_crm.common.claims import PENDING, KeyClaims
from airflow_provider_crm.common.errors import (
    CrmApiError,
    CrmInternalServerError,
    CrmPermanentApiError,
    CrmRateLimitError,
    CrmTransientApiError,
)
from airflow_provider_crm.common.ratelimit.limiter import LimiterStats
from airflow_provider_crm.common.retry import acall_with_retries, call_with_retries

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

REFUSED_STATUSES = frozenset({429, 503})


def refused_before_running(err: BaseException) -> bool:
    """Whether the service refused the request without doing it (so sending it again is safe)."""
    if isinstance(err, CrmRateLimitError):
        return True
    return isinstance(err, CrmApiError) and err.status in REFUSED_STATUSES


class CrmCreateOutcomeUnknownError(CrmPermanentApiError):
    """A create failed in a way that leaves its outcome unknown (a lost answer, a 5xx, a timeout) and
    nothing can look it up: it may exist, so neither this task nor Airflow's task retry sends it again."""


def _outcome_unknown(err: CrmApiError, description: str) -> CrmCreateOutcomeUnknownError:
    return CrmCreateOutcomeUnknownError(
        f"{description}: {err.api_message}", service=err.service, status=err.status, code=err.code,
        correlation_id=err.correlation_id,
        hint="The record may have been created: check before running again. Give the create a key "
             "(key_field) so that a retry can look it up and is safe")


class _Unsafe(Exception):
    """Carries an error out of the retry loop: a create that may have landed and cannot be checked."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _CreateAttempts:
    """What one attempt of a create leaves for the next (see the module doc); the sync and async loops
    below share it."""

    def __init__(self, description: str, can_look: bool) -> None:
        self.description = description
        self.can_look = can_look
        self.uncertain = False  # an earlier attempt may have landed

    def look_first(self) -> bool:
        return self.uncertain and self.can_look

    def landed(self, found: T) -> T:
        log.info("%s: the earlier attempt did land (its answer was lost); not creating it again", self.description)
        return found

    def look_once(self, err: CrmTransientApiError) -> bool:
        """A 500: the service asks not to repeat the payload, so look once and never send it again."""
        return self.can_look and isinstance(err, CrmInternalServerError) and not refused_before_running(err)

    def failure(self, err: CrmTransientApiError) -> BaseException:
        """What to raise into the retry loop after ``err``."""
        if refused_before_running(err):
            return err  # nothing was done: retried as it is
        if isinstance(err, CrmInternalServerError):
            return _Unsafe(_outcome_unknown(err, self.description))
        if not self.can_look:
            log.warning("%s: %s; not sending it again: it may have landed and nothing can check that",
                        self.description, err)
            return _Unsafe(_outcome_unknown(err, self.description))
        self.uncertain = True
        return err


def create_safely(send: Callable[[], T], *, lookup: Callable[[], T | None] | None, description: str,
                  stats: LimiterStats | None = None) -> T:
    """Send a create, retrying it only when that cannot make a second record (see the module doc).

    :param send: one attempt of the create.
    :param lookup: finds the record an earlier attempt may have created, or None; without one an
        attempt whose outcome is unknown is never repeated.
    :param description: names the create in log lines.
    :param stats: the limiter's stats (retry waits are counted there).
    """
    attempts = _CreateAttempts(description, lookup is not None)

    def attempt() -> T:
        if lookup is not None and attempts.look_first() and (found := lookup()) is not None:
            return attempts.landed(found)
        try:
            return send()
        except CrmTransientApiError as err:
            if lookup is not None and attempts.look_once(err) and (found := lookup()) is not None:
                return found
            raise attempts.failure(err) from None

    try:
        return call_with_retries(attempt, idempotent=True, description=description, stats=stats)
    except _Unsafe as unsafe:
        raise unsafe.error from None


async def acreate_safely(send: Callable[[], Awaitable[T]], *, lookup: Callable[[], Awaitable[T | None]] | None,
                         description: str, stats: LimiterStats | None = None) -> T:
    """The async twin of :func:`create_safely` (the same rules, awaited)."""
    attempts = _CreateAttempts(description, lookup is not None)

    async def attempt() -> T:
        if lookup is not None and attempts.look_first() and (found := await lookup()) is not None:
            return attempts.landed(found)
        try:
            return await send()
        except CrmTransientApiError as err:
            if lookup is not None and attempts.look_once(err) and (found := await lookup()) is not None:
                return found
            raise attempts.failure(err) from None

    try:
        return await acall_with_retries(attempt, idempotent=True, description=description, stats=stats)
    except _Unsafe as unsafe:
        raise unsafe.error from None


def create_once(claims: KeyClaims, name: str, *, recorded: Callable[[str], R | None],
                find: Callable[[bool], R | None], create: Callable[[], R],
                ident: Callable[[R], Any]) -> tuple[R, bool]:
    """The record for one key, created at most once however many writers ask at the same time.

    Under the key's claim: the record another writer marked (``recorded(id)``), else ``find(suspect)``
    (``suspect`` is True when a mark exists that did not lead to a live record: an earlier writer died
    or lost its answer mid-create, so an index read before then is not enough), else ``create()``.
    Returns the record and whether this call created it.
    """
    with claims.hold(name) as claim:
        mark = claim.mark()
        found = recorded(mark) if mark and mark != PENDING else None
        if found is None:
            found = find(mark is not None)
        if found is not None:
            if mark != str(ident(found)):
                claim.set_mark(str(ident(found)))
            return found, False
        claim.refresh()
        claim.set_mark(PENDING)
        record = create()
        claim.set_mark(str(ident(record)))
        return record, True
