"""Where the limiter keeps its windows and shared counters: this process (memory), every process on this
machine (a SQLite file, file-locked) or every machine (Redis). One store per location per process; keys
are a digest of the token, never the token.

A window is a set of slots, each with the time it stops counting. A slot is *held* while its request
is in flight (until ``hold`` seconds at most, for a process that dies mid-request) and *settled* when
the answer arrives: from then it counts for one window. The server counts a request somewhere between
its sending and its answer, so a window settled at the answer never leaves ours before it leaves the
server's, however late the request reaches the server (issue 18: a slot stamped when claimed, with a
fixed allowance for the delay, met 429s on a loaded machine). Taking a slot is one atomic step per
store: a lock (memory), a file lock and one SQLite transaction (file) or one Lua script (Redis)."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from airflow_provider_crm.common.errors import CrmConfigError, CrmError

DEFAULT_MAX_WAIT = 120.0

class LimitStore(ABC):
    """Where windows and shared counters live. One instance per location per process."""

    description = "store"

    @abstractmethod
    def take_slot(self, window: str, slot: str, limit: int, seconds: float, hold: float) -> float:
        """Hold a slot in ``window`` if fewer than ``limit`` count now; return 0 when taken, else the
        seconds until one may be free (at most ``seconds``: a held slot frees a window after its answer)."""

    @abstractmethod
    def settle_slot(self, window: str, slot: str, seconds: float) -> None:
        """The slot's answer arrived: it counts for ``seconds`` from now (again, if its hold lapsed)."""

    @abstractmethod
    def drop_slot(self, window: str, slot: str) -> None:
        """The slot's request was never sent: free it."""

    @abstractmethod
    def slots_counting(self, window: str) -> int:
        """How many slots count in ``window`` now (held or settled)."""

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
        self._windows: dict[str, dict[str, float]] = {}  # window -> slot -> when it stops counting
        self._values: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _slots(self, window: str, now: float) -> dict[str, float]:
        slots = self._windows.setdefault(window, {})
        for slot in [slot for slot, until in slots.items() if until <= now]:
            del slots[slot]
        return slots

    def take_slot(self, window: str, slot: str, limit: int, seconds: float, hold: float) -> float:
        with self._lock:
            now = time.time()
            slots = self._slots(window, now)
            if len(slots) < limit:
                slots[slot] = now + hold
                return 0.0
            return max(0.001, min(min(slots.values()) - now, seconds))

    def settle_slot(self, window: str, slot: str, seconds: float) -> None:
        with self._lock:
            self._windows.setdefault(window, {})[slot] = time.time() + seconds

    def drop_slot(self, window: str, slot: str) -> None:
        with self._lock:
            self._windows.get(window, {}).pop(slot, None)

    def slots_counting(self, window: str) -> int:
        with self._lock:
            return len(self._slots(window, time.time()))

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
        self._lock = threading.RLock()  # the file lock is shared by this process's threads; this orders them
        from filelock import FileLock

        self._values_lock = FileLock(str(directory / "crm-values.lock"), thread_local=False)
        self._conn = sqlite3.connect(str(directory / "crm-values.sqlite"), check_same_thread=False, timeout=30)
        with self._values_lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # the values are worth a window or a day: a power cut may lose the last commits, not corrupt
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS crm_values (key TEXT PRIMARY KEY, value REAL NOT NULL, expires REAL NOT NULL)"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS crm_slots (win TEXT NOT NULL, slot TEXT NOT NULL, until REAL NOT NULL, "
                "PRIMARY KEY (win, slot))"
            )
            # a window sweeps its own expired slots when it takes the next one; those of a token no
            # longer used, and expired values, go here, when a process opens the file
            now = time.time()
            self._conn.execute("DELETE FROM crm_slots WHERE until <= ?", (now,))
            self._conn.execute("DELETE FROM crm_values WHERE expires <= ?", (now,))
            self._conn.commit()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[float]:
        """This process's threads, then every process: the time is read once both are held."""
        with self._lock, self._values_lock:
            try:
                yield time.time()
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise

    def take_slot(self, window: str, slot: str, limit: int, seconds: float, hold: float) -> float:
        with self._locked() as now:
            self._conn.execute("DELETE FROM crm_slots WHERE win = ? AND until <= ?", (window, now))
            count, first = self._conn.execute(
                "SELECT COUNT(*), MIN(until) FROM crm_slots WHERE win = ?", (window,)).fetchone()
            if count < limit:
                self._conn.execute("INSERT OR REPLACE INTO crm_slots (win, slot, until) VALUES (?, ?, ?)",
                                   (window, slot, now + hold))
                return 0.0
            return max(0.001, min(float(first) - now, seconds))

    def settle_slot(self, window: str, slot: str, seconds: float) -> None:
        with self._locked() as now:
            self._conn.execute("INSERT OR REPLACE INTO crm_slots (win, slot, until) VALUES (?, ?, ?)",
                               (window, slot, now + seconds))

    def drop_slot(self, window: str, slot: str) -> None:
        with self._locked():
            self._conn.execute("DELETE FROM crm_slots WHERE win = ? AND slot = ?", (window, slot))

    def slots_counting(self, window: str) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM crm_slots WHERE win = ? AND until > ?",
                                     (window, time.time())).fetchone()
            return int(row[0])

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
    # Redis's clock, so that workers on several machines agree on when a slot stops counting.
    # KEYS[1] the window; ARGV: slot, limit, window seconds, hold seconds
    _TAKE_SLOT = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
        redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) * 1000) + 1000)
        return '0'
    end
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return tostring(math.max(0.001, math.min(tonumber(first[2]) - now, tonumber(ARGV[3]))))
    """
    # KEYS[1] the window; ARGV: slot, window seconds
    _SETTLE_SLOT = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
    local ms = math.ceil(tonumber(ARGV[2]) * 1000) + 1000
    if redis.call('PTTL', KEYS[1]) < ms then
        redis.call('PEXPIRE', KEYS[1], ms)
    end
    return 1
    """
    _COUNT_SLOTS = """
    local t = redis.call('TIME')
    return redis.call('ZCOUNT', KEYS[1], '(' .. (tonumber(t[1]) + tonumber(t[2]) / 1000000), '+inf')
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
        self._set_max = self._redis.register_script(self._SET_MAX)
        self._take_slot = self._redis.register_script(self._TAKE_SLOT)
        self._settle_slot = self._redis.register_script(self._SETTLE_SLOT)
        self._count_slots = self._redis.register_script(self._COUNT_SLOTS)

    def take_slot(self, window: str, slot: str, limit: int, seconds: float, hold: float) -> float:
        return float(self._take_slot(keys=[f"crm:window:{window}"], args=[slot, limit, repr(seconds), repr(hold)]))

    def settle_slot(self, window: str, slot: str, seconds: float) -> None:
        self._settle_slot(keys=[f"crm:window:{window}"], args=[slot, repr(seconds)])

    def drop_slot(self, window: str, slot: str) -> None:
        self._redis.zrem(f"crm:window:{window}", slot)

    def slots_counting(self, window: str) -> int:
        return int(self._count_slots(keys=[f"crm:window:{window}"]))

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
