"""Per-key claims for creates, in the store the rate limiter shares (file or Redis).

Two upserts of the same rows at once (two DAG runs, an Airflow retry overlapping a zombie, workers
on several machines) must create each key once. Between "is there a record with this key?" and
"create it" a writer holds the key's claim; whoever claims it next sees what the first did.

- Claims: the file store locks one of 1,024 lock files in its directory (``filelock``: an OS lock,
  released by the OS when a process dies, however it dies); Redis takes a ``redis-py`` lock that
  expires after ``[crm] upsert_claim_seconds`` (120) so a killed worker never blocks a key for long;
  the memory store uses thread locks (one process only, like its limiter).
- Marks: beside the claim, the writer records what it did with the key (``pending`` before the create,
  the new record's id after) for ``MARK_SECONDS``. The next claimant reads the record by that id
  instead of trusting a list it read before the create, and a ``pending`` mark (a writer died or its
  answer was lost mid-create) tells it to search before creating.

Names are digests (the key's text never reaches the store). Nothing here writes a lock algorithm:
the locking is filelock's and redis-py's.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow_provider_crm.common.errors import CrmRetryableError
from airflow_provider_crm.common.ratelimit.stores import (
    FileStore,
    LimitStore,
    MemoryStore,
    RedisStore,
    _config,
)

log = logging.getLogger(__name__)

PENDING = "pending"
MARK_SECONDS = 3 * 86400.0  # longer than any upsert's key list (index) lives
DEFAULT_CLAIM_SECONDS = 120.0
FILE_STRIPES = 1024


class CrmClaimTimeoutError(CrmRetryableError):
    """Another writer held a key's claim longer than we could wait."""


def claim_seconds() -> float:
    """How long a claim lives (Redis expiry) and how long a writer waits for one: ``[crm] upsert_claim_seconds``."""
    return float(_config("upsert_claim_seconds", str(DEFAULT_CLAIM_SECONDS)))


def claim_name(*parts: Any) -> str:
    """The store key for one record key (service, account, entity, key field, value): a digest."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:40]


class Claim:
    """A held claim on one key: read and write its mark, keep it alive before a long step."""

    def __init__(self, claims: KeyClaims, name: str, lock: Any = None) -> None:
        self._claims = claims
        self.name = name
        self._lock = lock

    def mark(self) -> str | None:
        return self._claims.get_mark(self.name)

    def set_mark(self, value: str) -> None:
        self._claims.set_mark(self.name, value)

    def refresh(self) -> None:
        """Restart the claim's expiry (Redis) before the write: a slow lookup must not let it lapse."""
        if self._lock is not None and hasattr(self._lock, "reacquire"):
            try:
                self._lock.reacquire()
            except Exception as err:  # LockNotOwnedError: it lapsed, another writer may hold it now
                raise CrmClaimTimeoutError(
                    f"the claim on this key lapsed before the create ({type(err).__name__}); not creating, "
                    "the row is left for a retry (raise [crm] upsert_claim_seconds if lookups take that long)"
                ) from None


class KeyClaims(ABC):
    """Claims and marks of one store location."""

    description = "claims"

    def __init__(self, seconds: float | None = None) -> None:
        self._seconds = seconds

    @property
    def seconds(self) -> float:
        return claim_seconds() if self._seconds is None else self._seconds

    @abstractmethod
    def hold(self, name: str) -> Any:
        """A context manager holding the claim on ``name`` (waits for another holder; raises
        :class:`CrmClaimTimeoutError` after ``2 x seconds``)."""

    @abstractmethod
    def get_mark(self, name: str) -> str | None: ...

    @abstractmethod
    def set_mark(self, name: str, value: str) -> None: ...

    def _timeout(self, name: str) -> CrmClaimTimeoutError:
        return CrmClaimTimeoutError(
            f"another writer has held the claim on this key for more than {2 * self.seconds:.0f}s "
            f"({self.description}); the row is left for a retry")


class MemoryClaims(KeyClaims):
    """One process: thread locks and a dict."""

    description = "memory claims (this process only)"

    def __init__(self, seconds: float | None = None) -> None:
        super().__init__(seconds)
        self._locks: dict[str, threading.Lock] = {}
        self._marks: dict[str, tuple[str, float]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, name: str) -> Iterator[Claim]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(timeout=2 * self.seconds):
            raise self._timeout(name)
        try:
            yield Claim(self, name)
        finally:
            lock.release()

    def get_mark(self, name: str) -> str | None:
        with self._guard:
            value, expires = self._marks.get(name, ("", 0.0))
            return value if value and expires > time.time() else None

    def set_mark(self, name: str, value: str) -> None:
        with self._guard:
            self._marks[name] = (value, time.time() + MARK_SECONDS)


class FileClaims(KeyClaims):
    """Every process on this machine: OS file locks (filelock) and a SQLite table of marks, in the
    file store's directory."""

    def __init__(self, directory: Path, seconds: float | None = None) -> None:
        super().__init__(seconds)
        self.directory = directory / "claims"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.description = f"file claims ({self.directory})"
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(str(self.directory / "marks.sqlite"), check_same_thread=False, timeout=60)
        with self._db_lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # no fsync per mark (1.7 ms a claimed create, measured): marks survive a killed process; only
            # an OS crash or power cut can lose the last few
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value TEXT NOT NULL, "
                             "expires REAL NOT NULL)")
            self._db.execute("DELETE FROM marks WHERE expires < ?", (time.time(),))
            self._db.commit()

    @contextmanager
    def hold(self, name: str) -> Iterator[Claim]:
        from filelock import FileLock, Timeout

        # a fixed set of lock files (keys share one now and then: they wait, they never mix up)
        stripe = int(name[:8], 16) % FILE_STRIPES
        lock = FileLock(str(self.directory / f"{stripe:04d}.lock"), timeout=2 * self.seconds, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise self._timeout(name) from None
        try:
            yield Claim(self, name)
        finally:
            lock.release()

    def get_mark(self, name: str) -> str | None:
        with self._db_lock:
            row = self._db.execute("SELECT value, expires FROM marks WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row and row[1] > time.time() else None

    def set_mark(self, name: str, value: str) -> None:
        with self._db_lock:
            self._db.execute("INSERT INTO marks (name, value, expires) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
                             "SET value = excluded.value, expires = excluded.expires",
                             (name, value, time.time() + MARK_SECONDS))
            self._db.commit()


class RedisClaims(KeyClaims):
    """Every machine: redis-py locks that expire (a killed worker's claim lapses) and marks with a TTL."""

    def __init__(self, client: Any, description: str, seconds: float | None = None) -> None:
        super().__init__(seconds)
        self._redis = client
        self.description = description.replace("redis", "redis claims", 1)

    @contextmanager
    def hold(self, name: str) -> Iterator[Claim]:
        lock = self._redis.lock(f"crm:claim:{name}", timeout=self.seconds, blocking_timeout=2 * self.seconds,
                                thread_local=False)
        if not lock.acquire():
            raise self._timeout(name)
        try:
            yield Claim(self, name, lock)
        finally:
            try:
                lock.release()
            except Exception as err:  # LockNotOwnedError: it expired while held, nothing left to release
                log.warning("A key claim lapsed while held (%s): raise [crm] upsert_claim_seconds if writes "
                            "under a claim take longer than %.0fs", type(err).__name__, self.seconds)

    def get_mark(self, name: str) -> str | None:
        value = self._redis.get(f"crm:made:{name}")
        return value.decode() if isinstance(value, bytes) else value

    def set_mark(self, name: str, value: str) -> None:
        self._redis.set(f"crm:made:{name}", value, ex=int(MARK_SECONDS))


_CLAIMS: weakref.WeakKeyDictionary[LimitStore, KeyClaims] = weakref.WeakKeyDictionary()
_CLAIMS_LOCK = threading.Lock()


def claims_for(store: LimitStore) -> KeyClaims:
    """The claims kept beside a limiter's store: the same file directory or the same Redis."""
    with _CLAIMS_LOCK:
        if store not in _CLAIMS:
            if isinstance(store, FileStore):
                _CLAIMS[store] = FileClaims(store.directory)
            elif isinstance(store, RedisStore):
                _CLAIMS[store] = RedisClaims(store._redis, store.description)
            elif isinstance(store, MemoryStore):
                _CLAIMS[store] = MemoryClaims()
            else:
                raise TypeError(f"no claims for a {type(store).__name__}")
        return _CLAIMS[store]
