"""Where the limiter keeps its windows and shared counters: this process (memory), every process on this
machine (a SQLite file, file-locked) or every machine (Redis). One store per location per process; keys
are a digest of the token, never the token."""

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

from pyrate_limiter import AbstractBucket, InMemoryBucket, Rate, SQLiteBucket

from airflow_provider_crm.common.errors import CrmConfigError, CrmError

DEFAULT_MAX_WAIT = 120.0

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
