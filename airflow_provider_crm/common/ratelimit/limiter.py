"""The limiter engine: keeps one token's requests under its service's limits, shared by every process
that uses the same token.

Every request passes a :class:`RateLimiter` before it is sent (``before_request``) and reports the
answer after (``after_response``). The limiter keeps the caller under the limits its service's
:class:`~.policy.LimitPolicy` states, so tasks do not collect 429s, and when someone else causes one it
makes every process that shares the store wait it out.

The sliding windows are pyrate-limiter buckets (in memory, SQLite with a file lock, or Redis: see
:mod:`.stores`); the few shared values besides (the end of a block, the quotas used) are plain
counters in the same store. Keys are a digest of the token, never the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

from pyrate_limiter import Rate, RateItem

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

# Our windows are this much longer than the server's: a claim is stamped when it is committed and the
# server counts the request when it arrives. In between: the rest of the claim's commit (CLAIM_DEADLINE_S
# at most), the hook building and sending the request, the network and the server reaching its counter.
# A request later than the guard could make the server see one more in its window than we allowed.
# Measured with 4 processes and 2 CPU hogs on 2 cores (make stress, issue 15): claim to the sandbox's
# counter took up to 93 ms (p99 71 ms), so the old 50 ms let 21 through; 150 ms costs ~5 % of the
# Lite plan's throughput (19 per 2.15 s instead of per 2.05 s). See docs/rate-limits.md.
ARRIVAL_GUARD_S = 0.15
# A claim committed longer than this after its timestamp was read (a process descheduled between the
# two) is stale: its slot would leave our window early. It stays (that only errs on the safe side) and
# the request takes a fresh claim.
CLAIM_DEADLINE_S = 0.02
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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
        self._acquired = 0
        self.late_claims = 0  # claims taken again because they were committed too late (tests read it)
        self._buckets = {
            w.name: store.bucket(f"{service}_{key}_{w.name}", [Rate(w.limit, int((w.seconds + ARRIVAL_GUARD_S) * 1000))])
            for w in self.windows
        }
        self._bucket_lock = threading.Lock()

    def in_flight(self, latency_s: float, cap: int, kind: str = "read", headroom: float = 4.0) -> int:
        """How many requests of ``kind`` to keep in flight so that the plan's window, not the latency,
        sets the pace: the tightest window's rate times ``latency_s`` times ``headroom``, at least one
        and at most ``cap``. The default headroom of 4 drains a window's allowance in a quarter of the
        window, so a job of several windows waits on the plan alone, even with slower answers now and
        then. More than that only waits in the limiter."""
        rates = [w.limit / w.seconds for w in self.windows if kind in w.kinds]
        if not rates:
            return max(1, cap)
        return max(1, min(cap, math.ceil(min(rates) * max(0.0, latency_s) * headroom)))

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
    def _try_windows(self, kind: str) -> tuple[float, str]:
        """Take a slot in every window this kind uses; return (0, "") or (seconds to wait, reason)."""
        blocked = self._blocked_for()
        if blocked > 0:
            code = self.store.get(self._value_key("block_reason"))
            return blocked, f"paused: {self.BLOCK_REASONS.get(code, 'the service asked to slow down')}"
        with self._bucket_lock:
            for window in self.windows:
                if kind not in window.kinds:
                    continue
                bucket = self._buckets[window.name]
                while True:
                    with self.store.claim_lock(bucket):
                        claimed = time.time()  # read under the store's lock, when it has one
                        item = RateItem(window.name, int(claimed * 1000), 1)
                        decision = bucket.put_decision(item)
                    if not decision.allowed:  # type: ignore[union-attr]
                        break
                    late = time.time() - claimed
                    if late <= CLAIM_DEADLINE_S:
                        break
                    # committed too long after its time was read: that claim leaves our window early
                    # (it stays, which only errs on the safe side); take a fresh one
                    self.late_claims += 1
                    log.debug("%s rate limit: claim committed %.0f ms late, claiming again", self.service, late * 1000)
                if decision.allowed:  # type: ignore[union-attr]
                    continue
                wait_ms = decision.retry_after_ms  # type: ignore[union-attr]
                if wait_ms is None:
                    wait_ms = bucket.waiting(item)  # type: ignore[assignment]
                wait = max(0.01, cast(float, wait_ms or 0) / 1000.0)
                return wait, f"{window.name}: {window.limit} per {window.seconds:g}s"
            self._acquired += 1
            if self._acquired % 500 == 0:
                for bucket in self._buckets.values():
                    try:
                        bucket.leak(int(time.time() * 1000))
                    except Exception:  # pragma: no cover - housekeeping only
                        log.debug("bucket leak failed", exc_info=True)
        return 0.0, ""

    def _next_wait(self, kind: str, waited: float) -> float:
        wait, reason = self._try_windows(kind)
        if wait <= 0:
            return 0.0
        if waited + wait > self.max_wait:
            raise CrmWaitTooLongError(reason, waited + wait, self.max_wait)
        self.stats.note_wait(wait, reason)
        log.info("%s rate limit: waiting %.2fs (%s)", self.service, wait, reason)
        return wait

    def before_request(self, kind: str = "read", cost: int = 1) -> None:
        """Block until the request may go; spend quotas. Raises instead of waiting too long.

        Quotas are spent first and the window slot is claimed last, so the request leaves right after
        its claim is committed: spending after the claim (two more store writes, each behind the
        values' file lock) held requests back up to 300 ms on a loaded machine, and their slots left
        our window that much before they reached the server's (issue 15). A request that does not
        go (a refusal, a wait too long) gives its quotas back."""
        spent = self._spend(kind, cost)
        try:
            waited = 0.0
            while True:
                wait = self._next_wait(kind, waited)
                if wait <= 0:
                    break
                time.sleep(wait)
                waited += wait
        except BaseException:
            self._refund(spent)
            raise
        self.stats.requests += 1

    async def before_request_async(self, kind: str = "read", cost: int = 1) -> None:
        """As :meth:`before_request`, without blocking the event loop (store I/O runs in a thread)."""
        spent = await asyncio.to_thread(self._spend, kind, cost)
        try:
            waited = 0.0
            while True:
                wait = await asyncio.to_thread(self._next_wait, kind, waited)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
                waited += wait
        except BaseException:
            self._refund(spent)
            raise
        self.stats.requests += 1

    # -- listening to answers -------------------------------------------------------------------------
    def after_response(self, status: int, headers: Mapping[str, str], kind: str = "read") -> None:
        """Reconcile with what the server says: a 429, and what its headers state (read by the policy)."""
        signals = self.policy.read_headers({k.lower(): v for k, v in headers.items()})
        reset = signals.reset
        if status == 429:
            self.stats.rate_limited += 1
            self.block(reset or self.block_seconds, f"HTTP 429 from {self.service}")
            return
        remaining = signals.remaining
        if remaining is not None and remaining < 1 and reset:
            # The server's window is full although ours keeps 5 % free: another client spends this
            # token too. Pause everyone until it resets (a reset is relative seconds, not an epoch).
            # At 1 left it is our own full window (19 of 20): pausing there cost a fifth of a 20-per-2-s
            # plan's throughput, measured.
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
    with store_errors_named(conn_id or policy.service, store):  # the store and its buckets open here
        return RateLimiter(policy, token_digest(token), get_store(store),
                           max_wait=default_max_wait() if max_wait is None else max_wait)
