"""The limiter engine: keeps one token's requests under its service's limits, shared by every process
that uses the same token.

Every request passes a :class:`RateLimiter` before it is sent (``before_request``) and reports the
answer after (``after_response``). The limiter keeps the caller under the limits its service's
:class:`~.policy.LimitPolicy` states, so tasks do not collect 429s, and when someone else causes one it
makes every process that shares the store wait it out.

A request holds one slot in each window it counts in from before it is sent until its answer
arrives, and the slot counts for one window from the answer (:mod:`.stores` says why that never
lets the server see more than the limit). The windows and the few shared values besides (the end of
a block, the quotas used) live in one store: memory, a SQLite file, or Redis. Keys are a digest of the
token, never the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airflow_provider_crm.common.errors import (
    CrmDailyBudgetExceededError,
    CrmQuotaExceededError,
    CrmWaitTooLongError,
)
from airflow_provider_crm.common.ratelimit.policy import Allowance, LimitPolicy
from airflow_provider_crm.common.ratelimit.stores import (
    LimitStore,
    default_max_wait,
    get_store,
    store_errors_named,
)

log = logging.getLogger(__name__)

# How long a slot is held for a request without an answer, unless the caller says (transports pass twice
# their timeout: connecting, then waiting for the first byte of an answer the server sends only after
# counting the request), plus the window: a process killed mid-request frees its slots after this.
# Were a live request's hold to lapse, its answer would count it again.
MAX_HOLD_S = 300.0
# waits at least this long are logged at INFO as they start; shorter ones only at DEBUG
LOGGED_WAIT_S = 1.0
QUOTA_WARNING_RATIO = 0.8


def token_digest(token: str) -> str:
    """The key a token's limits are stored under: a digest, so stores never hold the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------
# The limiter
# ---------------------------------------------------------------------------------------------------
@dataclass
class LimiterStats:
    """What the limiter did for one hook (one task): goes into operators' summaries."""

    waits: int = 0
    wait_seconds: float = 0.0
    rate_limited: int = 0
    requests: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    answers: int = 0  # requests whose slot was released (answered or failed) ...
    answer_seconds: float = 0.0  # ... and their time from the slot to the answer: latency without waits
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def note_answer(self, seconds: float) -> None:
        with self._lock:
            self.answers += 1
            self.answer_seconds += seconds

    def answers_mark(self) -> tuple[int, float]:
        """Where the answers stand now, for :meth:`latency_since`."""
        return self.answers, self.answer_seconds

    def latency_since(self, mark: tuple[int, float]) -> float | None:
        """The mean time from slot to answer of the requests answered since ``mark`` (None if none
        were): the latency to size concurrency by, without the waits for the window that other tasks
        on the token cause."""
        answered = self.answers - mark[0]
        return (self.answer_seconds - mark[1]) / answered if answered > 0 else None

    def note_wait(self, seconds: float, reason: str) -> None:
        with self._lock:
            self.waits += 1
            self.wait_seconds += seconds
            key = reason.split(":")[0]
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "waits": self.waits,
            "wait_seconds": round(self.wait_seconds, 2),
            "rate_limited": self.rate_limited,
        }


@dataclass
class Slot:
    """A request's place in its windows, from before it is sent until its answer: give it back with
    :meth:`RateLimiter.release` once the answer (or the failure) is in."""

    windows: tuple[tuple[str, float], ...]  # (store key, window seconds)
    id: str = field(default_factory=lambda: os.urandom(9).hex())
    taken: float = field(default_factory=time.monotonic)
    released: bool = False


class RateLimiter:
    """Keeps one token's requests under its service's limits (``policy``), shared through a store.

    Build it with :func:`build_limiter`. ``kind`` is ``read``, ``write`` or ``search``; ``cost`` is
    the request's charge against a budget spent by cost (a token budget).
    """

    def __init__(self, policy: LimitPolicy, key: str, store: LimitStore, *, max_wait: float) -> None:
        self.policy = policy
        self.service = service = policy.service
        self.key = key
        self.store = store
        self.windows = list(policy.windows)
        self.allowances = list(policy.allowances)
        self.block_seconds = policy.block_seconds
        self.max_wait = max_wait
        self.plan = policy.plan
        self.stats = LimiterStats()
        self._warned: set[str] = set()
        self._stated: dict[str, tuple[str, int | None]] = {}  # allowance -> (period, limit the server stated)
        self._window_keys = {w.name: f"{service}_{key}_{w.name}" for w in self.windows}

    def in_flight(self, latency_s: float, cap: int, kind: str = "read", headroom: float = 4.0) -> int:
        """How many requests of ``kind`` to keep in flight so that the plan's window, not the latency,
        sets the pace: the tightest window's rate times ``latency_s`` times ``headroom``, at least one
        and at most ``cap``. The default headroom of 4 drains a window's allowance in a quarter of the
        window, so a job of several windows waits on the plan alone, even with slower answers now and
        then. More than that only waits in the limiter."""
        rate = self.rate(kind)
        if rate is None:
            return max(1, cap)
        return max(1, min(cap, math.ceil(rate * max(0.0, latency_s) * headroom)))

    def rate(self, kind: str = "read") -> float | None:
        """The tightest window's requests a second for ``kind`` (None: no window limits it)."""
        rates = [w.limit / w.seconds for w in self.windows if kind in w.kinds]
        return min(rates) if rates else None

    # -- shared values ------------------------------------------------------------------------------
    def _value_key(self, name: str) -> str:
        return f"{self.service}:{self.key}:{name}"

    @staticmethod
    def _period_id(period: str) -> tuple[str, float]:
        now = datetime.now(timezone.utc)
        if period == "month":
            return now.strftime("%Y-%m"), 32 * 86400
        return now.strftime("%Y-%m-%d"), 2 * 86400

    def _blocked_for(self) -> float:
        return max(0.0, self.store.get(self._value_key("block_until")) - time.time())

    # why the token is paused, kept beside the pause so that every process logs the real reason
    BLOCK_REASONS = {1.0: "HTTP 429: the service refused a request", 2.0: "the service said no requests are left in "
                     "its window (x-ratelimit-remaining 0; no request was refused), waiting for its reset"}

    def block(self, seconds: float, reason: str) -> None:
        """Make every process sharing the store wait ``seconds`` (after a 429 or a spent window)."""
        if seconds <= 0:
            return
        self.store.set_max(self._value_key("block_until"), time.time() + seconds, ttl=seconds + 60)
        code = 1.0 if reason.startswith("HTTP 429") else 2.0 if "remaining" in reason else 0.0
        self.store.set(self._value_key("block_reason"), code, ttl=seconds + 60)
        log.warning("%s rate limit: every process on this token pauses %.1fs (%s)", self.service, seconds, reason)

    # -- allowances -----------------------------------------------------------------------------------
    def _allowance_used(self, allowance: Allowance) -> float:
        period, _ = self._period_id(allowance.period)
        return self.store.get(self._value_key(f"{allowance.name}:{period}"))

    def _limit(self, allowance: Allowance) -> int | None:
        """The allowance's limit this period: the one the server stated (for a ``stated`` allowance, kept
        in the store for every process), else the configured one (from the plan, or the connection's
        override), which may be wrong."""
        if not allowance.stated:
            return allowance.limit
        period, _ = self._period_id(allowance.period)
        known = self._stated.get(allowance.name)
        if known is None or known[0] != period:  # read once per period and process; answers update it
            stated = self.store.get(self._value_key(f"{allowance.name}:limit:{period}"))
            known = (period, int(stated) if stated > 0 else None)
            self._stated[allowance.name] = known
        return known[1] or allowance.limit

    def _take_stated_limit(self, allowance: Allowance, limit: int, left: float) -> None:
        """The server stated its limit and what is left: both are the truth, whatever the connection says."""
        period, ttl = self._period_id(allowance.period)
        known = self._stated.get(allowance.name)
        if known != (period, limit):
            self.store.set(self._value_key(f"{allowance.name}:limit:{period}"), limit, ttl)
            self._stated[allowance.name] = (period, limit)
            if allowance.limit is not None and allowance.limit != limit:
                log.info("%s states a %s of %d a day; the connection's plan and seats give %d: following %s",
                         self.service, allowance.name, limit, allowance.limit, self.service)
        self.store.set(self._value_key(f"{allowance.name}:{period}"), max(0.0, limit - left), ttl)

    def _spend(self, kind: str, cost: int) -> list[tuple[str, int, float]]:
        """Spend the allowances this request uses; return what was spent, for :meth:`_refund`."""
        spent: list[tuple[str, int, float]] = []
        try:
            for allowance in self.allowances:
                self._spend_one(allowance, kind, cost, spent)
        except BaseException:
            self._refund(spent)
            raise
        return spent

    def _refund(self, spent: list[tuple[str, int, float]]) -> None:
        for key, amount, ttl in spent:
            try:
                self.store.add(key, -amount, ttl)
            except Exception:  # pragma: no cover - the store failed while we were already failing
                log.debug("refund of %s failed", key, exc_info=True)

    def _spend_one(self, allowance: Allowance, kind: str, cost: int, spent: list[tuple[str, int, float]]) -> None:
        limit = self._limit(allowance)
        if limit is None or kind not in allowance.kinds:
            return
        amount = cost if allowance.by_cost else 1
        period, ttl = self._period_id(allowance.period)
        key = self._value_key(f"{allowance.name}:{period}")
        used_before = self._allowance_used(allowance)
        if used_before + amount > limit:
            self._refuse(allowance, limit, used_before, amount)
        used = self.store.add(key, amount, ttl)
        if used > limit:
            # another process got there first
            self.store.add(key, -amount, ttl)
            self._refuse(allowance, limit, used - amount, amount)
        spent.append((key, amount, ttl))
        if used >= QUOTA_WARNING_RATIO * limit and allowance.name not in self._warned:
            self._warned.add(allowance.name)
            log.warning(
                "%s %s: %d of %d used this %s (%.0f%%)",
                self.service, allowance.name, used, limit, allowance.period, 100 * used / limit,
            )

    def _refuse(self, allowance: Allowance, limit: int, used: float, amount: int) -> None:
        source = f"stated by {self.service}" if limit != allowance.limit else f"plan {self.plan!r}"
        text = (
            f"{self.service} {allowance.name}: {used:.0f} of {limit} already used this {allowance.period} "
            f"({source}); this request needs {amount} more"
        )
        if allowance.hard:
            raise CrmQuotaExceededError(
                text + ". Raise the plan or the connection's quota override, or wait for the next "
                f"{allowance.period}."
            )
        raise CrmDailyBudgetExceededError(text + "; it comes back at the daily reset (midnight UTC).")

    def check_quota(self, calls: int) -> None:
        """Refuse now if ``calls`` more requests would not fit in a hard quota (a monthly quota)."""
        for allowance in self.allowances:
            if allowance.limit is None or not allowance.hard:
                continue
            used = self._allowance_used(allowance)
            if used + calls > allowance.limit:
                raise CrmQuotaExceededError(
                    f"{self.service} {allowance.name}: this run needs about {calls} calls but only "
                    f"{max(0, allowance.limit - int(used))} of {allowance.limit} are left this {allowance.period} "
                    f"(plan {self.plan!r}); not starting a run that cannot finish"
                )

    def quota_status(self) -> dict[str, Any]:
        return {a.name: {"used": self._allowance_used(a), "limit": self._limit(a)} for a in self.allowances}

    # -- windows --------------------------------------------------------------------------------------
    def _try_windows(self, kind: str, hold: float | None = None) -> tuple[float, Slot | None, str]:
        """Hold a slot in every window this kind counts in: (0, the slot, "") or (seconds to wait, None,
        reason). All or none: a window that refuses gives back the slots already held."""
        blocked = self._blocked_for()
        if blocked > 0:
            code = self.store.get(self._value_key("block_reason"))
            return blocked, None, f"paused: {self.BLOCK_REASONS.get(code, 'the service asked to slow down')}"
        windows = [w for w in self.windows if kind in w.kinds]
        slot = Slot(tuple((self._window_keys[w.name], float(w.seconds)) for w in windows))
        for index, window in enumerate(windows):
            wait = self.store.take_slot(slot.windows[index][0], slot.id, window.limit, window.seconds,
                                        (MAX_HOLD_S if hold is None else hold) + window.seconds)
            if wait > 0:
                for key, _ in slot.windows[:index]:
                    self.store.drop_slot(key, slot.id)
                return wait, None, f"{window.name}: {window.limit} per {window.seconds:g}s"
        return 0.0, slot, ""

    def release(self, slot: Slot | None) -> None:
        """The slot's answer arrived, or its request failed: from now it counts for one window (the
        server counted the request, if it did, before now). Safe to call twice."""
        if slot is None or slot.released:
            return
        slot.released = True
        self.stats.note_answer(time.monotonic() - slot.taken)
        for key, seconds in slot.windows:
            self.store.settle_slot(key, slot.id, seconds)

    def counting(self, window: str) -> int:
        """How many requests count in one of this token's windows now (held or answered): for tests."""
        return self.store.slots_counting(self._window_keys[window])

    def _next_wait(self, kind: str, waited: float, hold: float | None) -> tuple[float, Slot | None]:
        wait, slot, reason = self._try_windows(kind, hold)
        if slot is not None:
            return 0.0, slot
        if waited + wait > self.max_wait:
            raise CrmWaitTooLongError(reason, waited + wait, self.max_wait)
        self.stats.note_wait(wait, reason)
        # a job that keeps to the window waits hundreds of times for a fraction of a second: those go to
        # the progress lines as totals (common/progress.py), a long wait to the task log as it starts
        log.log(logging.INFO if wait >= LOGGED_WAIT_S else logging.DEBUG,
                "%s rate limit: waiting %.2fs (%s)", self.service, wait, reason)
        return wait, None

    def before_request(self, kind: str = "read", cost: int = 1, hold: float | None = None) -> Slot:
        """Block until the request may go; spend quotas; return its slot, for :meth:`release` when the
        answer is in (a slot never released counts for ``hold`` seconds, default ``MAX_HOLD_S``, and a
        window). Raises instead of waiting too long; a request that does not go (a refusal, a wait too
        long) gives its quotas back."""
        spent = self._spend(kind, cost)
        try:
            waited = 0.0
            while True:
                wait, slot = self._next_wait(kind, waited, hold)
                if slot is not None:
                    break
                time.sleep(wait)
                waited += wait
        except BaseException:
            self._refund(spent)
            raise
        self.stats.requests += 1
        return slot

    async def before_request_async(self, kind: str = "read", cost: int = 1, hold: float | None = None) -> Slot:
        """As :meth:`before_request`, without blocking the event loop (store I/O runs in a thread)."""
        spent = await asyncio.to_thread(self._spend, kind, cost)
        try:
            waited = 0.0
            while True:
                wait, slot = await asyncio.to_thread(self._next_wait, kind, waited, hold)
                if slot is not None:
                    break
                await asyncio.sleep(wait)
                waited += wait
        except BaseException:
            self._refund(spent)
            raise
        self.stats.requests += 1
        return slot

    @contextmanager
    def request(self, kind: str = "read", cost: int = 1, hold: float | None = None) -> Iterator[Slot]:
        """``before_request`` and, whatever happens in the block, ``release``: wrap the sending alone."""
        slot = self.before_request(kind, cost, hold)
        try:
            yield slot
        finally:
            self.release(slot)

    # -- listening to answers -------------------------------------------------------------------------
    def _full_window_is_ours(self, kind: str, stated_limit: float | None) -> bool:
        """Whether the server's full window (its stated limit reached) holds only what our own window
        counts. Ours counts every request of ours the server still counts (slots count from the
        answer, and this request's is already settled), so when our window of the same limit is full
        too, the server's full window may be all ours and the limiter already waits as long as a pause
        would; when ours is not full, or keeps a margin under the server's limit, someone else spends
        the token."""
        if not stated_limit:
            return False
        for window in self.windows:
            if kind in window.kinds and window.limit == int(stated_limit):
                return self.counting(window.name) >= window.limit
        return False

    def after_response(self, status: int, headers: Mapping[str, str], kind: str = "read") -> None:
        """Reconcile with what the server says: a 429, and what its headers state (read by the policy)."""
        signals = self.policy.read_headers({k.lower(): v for k, v in headers.items()})
        reset = signals.reset
        if status == 429:
            self.stats.rate_limited += 1
            self.block(reset or self.block_seconds, f"HTTP 429 from {self.service}")
            return
        remaining = signals.remaining
        if remaining is not None and remaining < 1 and reset and not self._full_window_is_ours(kind, signals.limit):
            # The server's window is full and not with our requests alone: another client spends this
            # token too. Pause everyone until it resets (a reset is relative seconds, not an epoch).
            self.block(min(reset, 60.0), f"x-ratelimit-remaining is {remaining:.0f}")
        for allowance in self.allowances:
            left = signals.left.get(allowance.name)
            if left is None:
                continue
            stated = signals.stated.get(allowance.name)
            if stated:
                # the server's own limit and remaining: never mixed with the configured limit
                self._take_stated_limit(allowance, int(stated), left)
                continue
            if allowance.limit is None:
                continue
            period, ttl = self._period_id(allowance.period)
            self.store.set_max(self._value_key(f"{allowance.name}:{period}"), allowance.limit - left, ttl)


def build_limiter(policy: LimitPolicy, token: str, *, store: str | None = None, max_wait: float | None = None,
                  conn_id: str | None = None) -> RateLimiter:
    """The limiter for one token of one service.

    :param policy: the service's limits for this token (``clients/<service>/policy.py`` builds it).
    :param token: the credential; only its digest is used as a key.
    :param store: ``memory``, ``file``, ``file:///dir`` or ``redis://...``; default ``[crm] rate_limit_store``.
    :param max_wait: longest wait sat out in-process; default ``[crm] max_rate_limit_wait``.
    :param conn_id: the connection, named in configuration errors (the store's included).
    """
    with store_errors_named(conn_id or policy.service, store):  # the store opens here
        return RateLimiter(policy, token_digest(token), get_store(store),
                           max_wait=default_max_wait() if max_wait is None else max_wait)
