"""Client-side rate limiting shared by every process that uses the same token.

Every request of both hooks passes a :class:`RateLimiter` before it is sent (``before_request``) and
reports the answer after (``after_response``). The limiter keeps the caller under the service's
limits, so tasks do not collect 429s, and when someone else causes one it makes every process that
shares the store wait it out.

The sliding windows are pyrate-limiter buckets (in memory, SQLite with a file lock, or Redis); the
few shared values besides (the end of a block, the monthly quota used, the daily budget spent) are
plain counters in the same store. Keys are a digest of the token, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

from pyrate_limiter import AbstractBucket, InMemoryBucket, Rate, RateItem, SQLiteBucket

from airflow_provider_crm.common.errors import (
    CrmConfigError,
    CrmDailyBudgetExceededError,
    CrmError,
    CrmQuotaExceededError,
    CrmWaitTooLongError,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Policies: the numbers, from ../shared/api-notes (Pipefy's help centre, Pipedrive's docs)
# ---------------------------------------------------------------------------------------------------
PIPEFY_WINDOW_SECONDS = 30
PIPEFY_REQUESTS_PER_WINDOW = 500
PIPEFY_BLOCK_SECONDS = 300.0
PIPEFY_MONTHLY_QUOTA: dict[str, int | None] = {"starter": 20, "business": 500, "enterprise": 10_000, "unlimited": None}

PIPEDRIVE_PLAN_ALIASES = {"essential": "lite", "advanced": "growth", "professional": "premium", "enterprise": "ultimate"}
# (API token, OAuth) requests per 2-second window
PIPEDRIVE_BURST: dict[str, tuple[int, int]] = {
    "lite": (20, 80),
    "growth": (40, 160),
    "premium": (100, 400),
    "ultimate": (120, 480),
}
PIPEDRIVE_BUDGET_MULTIPLIER = {"lite": 1, "growth": 2, "premium": 5, "ultimate": 7}
PIPEDRIVE_BASE_DAILY_TOKENS = 30_000
PIPEDRIVE_SEARCH_PER_2S = 10
PIPEDRIVE_DAILY_WRITES = 10_000  # POST/PUT per user per UTC day with an API token ("fair use")
PIPEDRIVE_WINDOW_SECONDS = 2

DEFAULT_SAFETY = 0.95  # stay this fraction under each window limit
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
DEFAULT_MAX_WAIT = 120.0
QUOTA_WARNING_RATIO = 0.8
TOKEN_BUDGET = "daily token budget"  # Pipedrive's company-wide budget (x-daily-ratelimit-token-limit / -remaining)


def normalise_pipedrive_plan(plan: str) -> str:
    plan = plan.lower()
    return PIPEDRIVE_PLAN_ALIASES.get(plan, plan)


def token_digest(token: str) -> str:
    """The key a token's limits are stored under: a digest, so stores never hold the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------
# Pipedrive endpoint costs (x-token-cost from the published OpenAPI specs)
# ---------------------------------------------------------------------------------------------------
_COSTS: dict[str, list[tuple[str, str, int]]] | None = None


def _load_costs() -> dict[str, list[tuple[str, str, int]]]:
    global _COSTS
    if _COSTS is None:
        raw = json.loads(resources.files("airflow_provider_crm.common").joinpath("pipedrive_costs.json").read_text())
        _COSTS = {version: [(m, p, int(c)) for m, p, c in rows] for version, rows in raw.items()}
    return _COSTS


def _template_matches(template: str, path: str) -> bool:
    t_parts, p_parts = template.strip("/").split("/"), path.strip("/").split("/")
    if len(t_parts) != len(p_parts):
        return False
    return all(t == p or (t.startswith("{") and t.endswith("}")) for t, p in zip(t_parts, p_parts, strict=True))


def pipedrive_token_cost(method: str, path: str, version: str = "v2") -> int:
    """Tokens a request costs against the daily budget.

    :param method: HTTP method.
    :param path: path after ``/api/v1`` or ``/api/v2``, concrete (``/deals/12``) or a template.
    :param version: ``v1`` or ``v2``.

    Exact templates win over ones with placeholders; unknown operations cost 10 (a list's price),
    which errs on the safe side for reads and matches writes' typical cost.
    """
    method = method.upper()
    path = "/" + path.split("?", 1)[0].strip("/")
    best: tuple[int, int] | None = None
    for m, template, cost in _load_costs().get(version, []):
        if m != method or not _template_matches(template, path):
            continue
        placeholders = template.count("{")
        if best is None or placeholders < best[0]:
            best = (placeholders, cost)
    return best[1] if best else 10


# ---------------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------------
class LimitStore(ABC):
    """Where windows and shared counters live. One instance per location per process."""

    description = "store"

    @abstractmethod
    def bucket(self, name: str, rates: list[Rate]) -> AbstractBucket: ...

    def claim_lock(self, bucket: AbstractBucket) -> contextlib.AbstractContextManager[Any]:
        """Held while a claim's time is read and the claim committed, where the store has such a lock
        (the file store's); a Redis claim is one atomic script, checked for lateness instead."""
        return contextlib.nullcontext()

    @abstractmethod
    def get(self, key: str) -> float: ...

    @abstractmethod
    def add(self, key: str, amount: float, ttl: float) -> float:
        """Add to a counter (created at 0, expiring after ``ttl`` s); return the new value."""

    @abstractmethod
    def set_max(self, key: str, value: float, ttl: float) -> float:
        """Raise a value to at least ``value``; return the stored value."""

    @abstractmethod
    def set(self, key: str, value: float, ttl: float) -> None:
        """Replace a value (what the server states is the truth)."""


class MemoryStore(LimitStore):
    """This process only: right for a single task, wrong for several sharing a token."""

    description = "memory (this process only)"

    def __init__(self) -> None:
        self._buckets: dict[str, AbstractBucket] = {}
        self._values: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def bucket(self, name: str, rates: list[Rate]) -> AbstractBucket:
        with self._lock:
            if name not in self._buckets:
                self._buckets[name] = InMemoryBucket(rates)
            return self._buckets[name]

    def _live(self, key: str) -> float:
        value, expires = self._values.get(key, (0.0, 0.0))
        return value if expires > time.time() else 0.0

    def get(self, key: str) -> float:
        with self._lock:
            return self._live(key)

    def add(self, key: str, amount: float, ttl: float) -> float:
        with self._lock:
            value = self._live(key) + amount
            expires = self._values.get(key, (0.0, 0.0))[1]
            self._values[key] = (value, expires if expires > time.time() else time.time() + ttl)
            return value

    def set_max(self, key: str, value: float, ttl: float) -> float:
        with self._lock:
            current = self._live(key)
            if value > current:
                self._values[key] = (value, time.time() + ttl)
                return value
            return current

    def set(self, key: str, value: float, ttl: float) -> None:
        with self._lock:
            self._values[key] = (value, time.time() + ttl)


class FileStore(LimitStore):
    """A SQLite file shared by every process on this machine (file-locked, WAL)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.description = f"file ({directory})"
        self._db = str(directory / "crm-ratelimit.sqlite")
        self._buckets: dict[str, SQLiteBucket] = {}
        self._lock = threading.RLock()  # pyrate's file lock is per thread; this covers our threads
        from filelock import FileLock

        self._values_lock = FileLock(str(directory / "crm-values.lock"), thread_local=False)
        self._conn = sqlite3.connect(str(directory / "crm-values.sqlite"), check_same_thread=False, timeout=30)
        with self._values_lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS crm_values (key TEXT PRIMARY KEY, value REAL NOT NULL, expires REAL NOT NULL)"
            )
            self._conn.commit()

    def bucket(self, name: str, rates: list[Rate]) -> AbstractBucket:
        with self._lock:
            if name not in self._buckets:
                self._buckets[name] = SQLiteBucket.init_from_file(
                    rates, table=f"b_{name}", db_path=self._db, use_file_lock=True
                )
            return self._buckets[name]

    def claim_lock(self, bucket: AbstractBucket) -> contextlib.AbstractContextManager[Any]:
        # the bucket's own file lock (re-entrant in this thread, so its put() takes it again): the time
        # is read after every other process's claim is committed, never before a wait for the lock
        lock = getattr(bucket, "lock", None)
        return lock if lock is not None else contextlib.nullcontext()

    def _read(self, key: str, now: float) -> float:
        row = self._conn.execute("SELECT value, expires FROM crm_values WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row and row[1] > now else 0.0

    def get(self, key: str) -> float:
        with self._lock:
            return self._read(key, time.time())

    def _write(self, key: str, fn: Any, ttl: float) -> float:
        with self._lock, self._values_lock:
            now = time.time()
            row = self._conn.execute("SELECT value, expires FROM crm_values WHERE key = ?", (key,)).fetchone()
            live = row is not None and row[1] > now
            current = float(row[0]) if live else 0.0
            value, reset_expiry = fn(current)
            expires = now + ttl if (reset_expiry or not live) else row[1]
            self._conn.execute(
                "INSERT INTO crm_values (key, value, expires) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
                (key, value, expires),
            )
            self._conn.commit()
            return value

    def add(self, key: str, amount: float, ttl: float) -> float:
        return self._write(key, lambda current: (current + amount, False), ttl)

    def set_max(self, key: str, value: float, ttl: float) -> float:
        return self._write(key, lambda current: (max(current, value), value > current), ttl)

    def set(self, key: str, value: float, ttl: float) -> None:
        self._write(key, lambda current: (value, True), ttl)


class RedisStore(LimitStore):
    """Redis, shared by every machine (Celery or Kubernetes workers)."""

    _SET_MAX = """
    local current = tonumber(redis.call('GET', KEYS[1]) or '0')
    local value = tonumber(ARGV[1])
    if value > current then
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return ARGV[1]
    end
    return tostring(current)
    """

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError as err:  # pragma: no cover - depends on the extra
            raise ImportError("a redis:// rate-limit store needs: pip install 'airflow-provider-crm[redis]'") from err
        # a Redis that does not answer fails the task in seconds, not after the system's TCP timeout
        # (a socket_connect_timeout in the URL's query wins)
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=10)
        # never show the password a URL may carry
        self.description = "redis (" + url.split("@")[-1].split("://")[-1] + ")"
        self._redis.ping()  # an unreachable Redis fails here, where the error can name the setting
        self._buckets: dict[str, AbstractBucket] = {}
        self._lock = threading.Lock()
        self._set_max = self._redis.register_script(self._SET_MAX)

    def bucket(self, name: str, rates: list[Rate]) -> AbstractBucket:
        from pyrate_limiter import RedisBucket

        with self._lock:
            if name not in self._buckets:
                self._buckets[name] = RedisBucket.init(rates, self._redis, f"crm:bucket:{name}")
            return self._buckets[name]

    def get(self, key: str) -> float:
        value = self._redis.get(f"crm:value:{key}")
        return float(value) if value is not None else 0.0

    def add(self, key: str, amount: float, ttl: float) -> float:
        pipe = self._redis.pipeline()
        full = f"crm:value:{key}"
        pipe.incrbyfloat(full, amount)
        pipe.pexpire(full, int(ttl * 1000), nx=True)
        value, _ = pipe.execute()
        return float(value)

    def set_max(self, key: str, value: float, ttl: float) -> float:
        return float(self._set_max(keys=[f"crm:value:{key}"], args=[repr(value), int(ttl * 1000)]))

    def set(self, key: str, value: float, ttl: float) -> None:
        self._redis.set(f"crm:value:{key}", repr(value), px=int(ttl * 1000))


_STORES: dict[str, LimitStore] = {}
_STORES_LOCK = threading.Lock()


def _config(option: str, fallback: str) -> str:
    from airflow.providers.common.compat.sdk import conf

    value = conf.get("crm", option, fallback=fallback)
    return value if value not in (None, "") else fallback


def default_store_location() -> str:
    return _config("rate_limit_store", "file")


def default_max_wait() -> float:
    return float(_config("max_rate_limit_wait", str(DEFAULT_MAX_WAIT)))


def get_store(location: str | None) -> LimitStore:
    """The store for ``location`` (``memory``, ``file``, ``file:///dir`` or ``redis://...``), one per process."""
    location = location or default_store_location()
    with _STORES_LOCK:
        if location not in _STORES:
            if location == "memory":
                _STORES[location] = MemoryStore()
            elif location == "file" or location.startswith("file://"):
                directory = location[len("file://") :] if location.startswith("file://") else ""
                directory = directory or _config("rate_limit_dir", "") or str(Path(tempfile.gettempdir()) / "crm-ratelimit")
                _STORES[location] = FileStore(Path(directory))
            elif location.startswith(("redis://", "rediss://", "unix://")):
                _STORES[location] = RedisStore(location)
            else:
                raise ValueError(f"unknown rate-limit store {location.split('://')[0]!r}")
        return _STORES[location]


def safe_location(location: str) -> str:
    """A store location fit for messages: a URL's user and password left out."""
    parsed = urlparse(location)
    if parsed.scheme in ("redis", "rediss", "unix") and (parsed.username or parsed.password):
        return location.replace(parsed.netloc, parsed.netloc.rsplit("@", 1)[-1], 1)
    return location


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, sqlite3.Error, ValueError, ImportError]
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:  # pragma: no cover - depends on the extra
        pass
    return tuple(errors)


@contextlib.contextmanager
def store_errors_named(conn_id: str, location: str | None) -> Iterator[None]:
    """Opening a store that cannot be used (Redis unreachable or refusing the password, a directory
    that cannot be written) fails the task with a :class:`CrmConfigError` naming the connection and
    ``rate_limit_store``, instead of the library's own exception. No password is ever shown."""
    try:
        yield
    except CrmError:
        raise
    except _store_errors() as err:
        where = location or default_store_location()
        secret = urlparse(where).password
        shown = safe_location(where)
        detail = f"{type(err).__name__}: {err}"
        if secret:
            detail = detail.replace(secret, "***").replace(unquote(secret), "***")
        source = f"({shown!r})" if location else f"(not set: the [crm] rate_limit_store default {shown!r} applies)"
        if shown.startswith(("redis", "unix")):
            hint = "check that Redis runs, is reachable from this worker and takes the URL's password"
        else:
            hint = "check that the directory (or [crm] rate_limit_dir) can be created and written by this worker"
        raise CrmConfigError(conn_id, "rate_limit_store", f"{source}: the rate-limit store cannot be used ({detail}); "
                             f"{hint}, or set rate_limit_store to another store") from None


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


@dataclass(frozen=True)
class Window:
    """A sliding-window limit that applies to some request kinds (``seconds``: the server's window;
    the bucket's is longer by ``ARRIVAL_GUARD_S``)."""

    name: str
    limit: int
    seconds: float
    kinds: frozenset[str]


@dataclass(frozen=True)
class Allowance:
    """A budget over a calendar period (a month for Pipefy, a UTC day for Pipedrive)."""

    name: str
    limit: int | None
    period: str  # "month" | "day"
    kinds: frozenset[str]  # which request kinds spend it
    by_cost: bool  # spend `cost` (token budget) instead of 1 per request
    hard: bool  # True: refuse for good (monthly quota); False: retryable after the reset


class RateLimiter:
    """Keeps one token's requests under its limits, shared through a store.

    Build it with :func:`build_limiter`. ``kind`` is ``read``, ``write`` or ``search``; ``cost`` is
    the request's charge against a token budget (Pipedrive).
    """

    def __init__(
        self,
        service: str,
        key: str,
        store: LimitStore,
        windows: list[Window],
        allowances: list[Allowance],
        *,
        block_seconds: float,
        max_wait: float,
        plan: str,
    ) -> None:
        self.service = service
        self.key = key
        self.store = store
        self.windows = windows
        self.allowances = allowances
        self.block_seconds = block_seconds
        self.max_wait = max_wait
        self.plan = plan
        self.stats = LimiterStats()
        self._warned: set[str] = set()
        self._stated: dict[str, tuple[str, int | None]] = {}  # allowance -> (period, limit the server stated)
        self._acquired = 0
        self.late_claims = 0  # claims taken again because they were committed too late (tests read it)
        self._buckets = {
            w.name: store.bucket(f"{service}_{key}_{w.name}", [Rate(w.limit, int((w.seconds + ARRIVAL_GUARD_S) * 1000))])
            for w in windows
        }
        self._bucket_lock = threading.Lock()

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
        """The allowance's limit this period: the one the server stated (Pipedrive's
        ``x-daily-ratelimit-token-limit``, kept in the store for every process), else the configured one
        (plan x seats, or the connection's override), which may be wrong."""
        if allowance.name != TOKEN_BUDGET:
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
        """Refuse now if ``calls`` more requests would not fit in a hard quota (Pipefy's monthly)."""
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
        """Reconcile with what the server says: 429s and, for Pipedrive, the x-ratelimit-* headers."""
        lower = {k.lower(): v for k, v in headers.items()}
        reset = _number(lower.get("x-ratelimit-reset")) or _number(lower.get("retry-after"))
        if status == 429:
            self.stats.rate_limited += 1
            seconds = self.block_seconds if self.service == "pipefy" else (reset or PIPEDRIVE_WINDOW_SECONDS)
            if self.service == "pipefy" and reset:
                seconds = reset
            self.block(seconds, f"HTTP 429 from {self.service}")
            return
        remaining = _number(lower.get("x-ratelimit-remaining"))
        if remaining is not None and remaining < 1 and reset:
            # The server's window is full although ours keeps 5 % free: another client spends this
            # token too. Pause everyone until it resets (x-ratelimit-reset is relative seconds, not an
            # epoch). At 1 left it is our own full window (19 of 20): pausing there cost a fifth of
            # the Lite plan's throughput, measured.
            self.block(min(reset, 60.0), f"x-ratelimit-remaining is {remaining:.0f}")
        stated = _number(lower.get("x-daily-ratelimit-token-limit"))
        for header, name in (("x-daily-ratelimit-token-remaining", TOKEN_BUDGET),
                             ("x-daily-requests-left", "daily POST/PUT allowance")):
            left = _number(lower.get(header))
            allowance = next((a for a in self.allowances if a.name == name), None)
            if left is None or allowance is None:
                continue
            if name == TOKEN_BUDGET and stated:
                # the server's own limit and remaining: never mixed with the configured limit
                self._take_stated_limit(allowance, int(stated), left)
                continue
            if allowance.limit is None:
                continue
            period, ttl = self._period_id(allowance.period)
            self.store.set_max(self._value_key(f"{allowance.name}:{period}"), allowance.limit - left, ttl)


def _number(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except ValueError:
        return None


def build_limiter(
    service: str,
    token: str,
    *,
    plan: str | None = None,
    auth_type: str = "token",
    seats: int = 1,
    overrides: Mapping[str, int | None] | None = None,
    store: str | None = None,
    max_wait: float | None = None,
    safety: float = DEFAULT_SAFETY,
    block_seconds: float | None = None,
    conn_id: str | None = None,
) -> RateLimiter:
    """The limiter for one token of one service.

    :param service: ``pipefy`` or ``pipedrive``.
    :param token: the credential; only its digest is used as a key.
    :param plan: the account's plan (sets the defaults).
    :param auth_type: Pipedrive: ``token`` or ``oauth`` (OAuth apps get four times the burst).
    :param seats: Pipedrive: paid seats (daily token budget).
    :param overrides: ``requests_per_30s``, ``monthly_quota`` (Pipefy); ``requests_per_2s``,
        ``daily_token_budget`` (Pipedrive).
    :param store: ``memory``, ``file``, ``file:///dir`` or ``redis://...``; default ``[crm] rate_limit_store``.
    :param max_wait: longest wait sat out in-process; default ``[crm] max_rate_limit_wait``.
    :param safety: fraction of each window limit used.
    :param conn_id: the connection, named in configuration errors (the store's included).
    """
    given: dict[str, int] = {k: int(v) for k, v in (overrides or {}).items() if v is not None}
    key = token_digest(token)
    with store_errors_named(conn_id or service, store):
        limit_store = get_store(store)
    max_wait = default_max_wait() if max_wait is None else max_wait
    all_kinds = frozenset({"read", "write", "search"})
    if service == "pipefy":
        plan = (plan or "unlimited").lower()
        if plan not in PIPEFY_MONTHLY_QUOTA:
            raise CrmConfigError(conn_id or "pipefy", "plan", f"must be one of {', '.join(PIPEFY_MONTHLY_QUOTA)}")
        per_window = int(given.get("requests_per_30s", PIPEFY_REQUESTS_PER_WINDOW))
        quota = given.get("monthly_quota", PIPEFY_MONTHLY_QUOTA[plan])
        windows = [Window("requests", max(1, int(per_window * safety)), PIPEFY_WINDOW_SECONDS, all_kinds)]
        allowances = [Allowance("monthly call quota", quota, "month", all_kinds, by_cost=False, hard=True)]
        with store_errors_named(conn_id or service, store):  # the buckets open here
            return RateLimiter(
                service, key, limit_store, windows, allowances,
                block_seconds=PIPEFY_BLOCK_SECONDS if block_seconds is None else block_seconds,
                max_wait=max_wait, plan=plan,
            )
    if service == "pipedrive":
        plan = normalise_pipedrive_plan(plan or "lite")
        if plan not in PIPEDRIVE_BURST:
            raise CrmConfigError(conn_id or "pipedrive", "plan", f"must be one of {', '.join(PIPEDRIVE_BURST)}")
        burst = PIPEDRIVE_BURST[plan][1 if auth_type == "oauth" else 0]
        burst = int(given.get("requests_per_2s", burst))
        budget = given.get("daily_token_budget", PIPEDRIVE_BASE_DAILY_TOKENS * PIPEDRIVE_BUDGET_MULTIPLIER[plan] * seats)
        windows = [
            Window("burst", max(1, int(burst * safety)), PIPEDRIVE_WINDOW_SECONDS, all_kinds),
            Window("search", max(1, int(PIPEDRIVE_SEARCH_PER_2S * safety)), PIPEDRIVE_WINDOW_SECONDS,
                   frozenset({"search"})),
        ]
        allowances = [Allowance(TOKEN_BUDGET, budget, "day", all_kinds, by_cost=True, hard=False)]
        if auth_type == "token":
            allowances.append(Allowance("daily POST/PUT allowance", PIPEDRIVE_DAILY_WRITES, "day",
                                        frozenset({"write"}), by_cost=False, hard=False))
        with store_errors_named(conn_id or service, store):  # the buckets open here
            return RateLimiter(
                service, key, limit_store, windows, allowances,
                block_seconds=PIPEDRIVE_WINDOW_SECONDS if block_seconds is None else block_seconds,
                max_wait=max_wait, plan=plan,
            )
    raise ValueError(f"unknown service {service!r}")
