"""Shared machinery of the sandbox: configuration, a clock tests can move, counters, faults.

Each emulated service (``pipefy.py``, ``pipedrive.py``) owns its data and its own limit rules; this
module holds only what both need.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from starlette.responses import JSONResponse

# Tokens the sandbox accepts out of the box; printed at start so users can copy them.
DEFAULT_PIPEFY_TOKEN = "sandbox-pipefy-token"
DEFAULT_PIPEDRIVE_TOKEN = "sandbox-pipedrive-token"
DEFAULT_PIPEFY_CLIENT = ("sandbox-pipefy-client", "sandbox-pipefy-secret")
DEFAULT_PIPEDRIVE_CLIENT = ("sandbox-pipedrive-client", "sandbox-pipedrive-secret")
DEFAULT_PIPEDRIVE_REFRESH_TOKEN = "sandbox-pipedrive-refresh-token"


@dataclass
class SandboxConfig:
    """Everything the sandbox can be told at start (CLI flags map one to one)."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 42
    # dataset size
    pipefy_cards_per_phase: int = 30
    pipefy_table_records: int = 60
    pipedrive_deals: int = 500
    pipedrive_persons: int = 300
    pipedrive_organizations: int = 100
    pipedrive_mail_threads: int = 20
    # token -> plan
    pipefy_tokens: dict[str, str] = field(default_factory=lambda: {DEFAULT_PIPEFY_TOKEN: "unlimited"})
    pipedrive_tokens: dict[str, str] = field(default_factory=lambda: {DEFAULT_PIPEDRIVE_TOKEN: "ultimate"})
    pipedrive_seats: int = 5
    # limits
    pipefy_requests_per_window: int = 500
    pipefy_window_seconds: float = 30.0
    pipefy_block_seconds: float = 300.0
    pipefy_max_page: int = 50  # page cap (pipefy.py MAX_PAGE); more grants larger pages
    # latency added to every API answer (not to control endpoints)
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    # render every record's JSON at start (benchmarks: the emulator's CPU is not the client's cost)
    prerender: bool = False
    # random faults, as fractions of API requests
    error_rate: float = 0.0  # 500 before doing anything
    lost_answer_rate: float = 0.0  # do the work, then answer 502 (the answer is lost)
    truncate_rate: float = 0.0  # do the work, then cut the answer's body short and close the connection
    snapshot: str | None = None


class SandboxClock:
    """Wall clock plus an offset that tests move forward (``POST /_sandbox/clock``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class SlidingWindow:
    """Counts events in the last ``window`` seconds; remembers the highest count ever seen."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.events: collections.deque[float] = collections.deque()
        self.max_seen = 0

    def _trim(self, now: float) -> None:
        while self.events and self.events[0] <= now - self.window:
            self.events.popleft()

    def count(self, now: float) -> int:
        self._trim(now)
        return len(self.events)

    def hit(self, now: float) -> int:
        """Record one event; return how many the window now holds (including this one)."""
        self._trim(now)
        self.events.append(now)
        self.max_seen = max(self.max_seen, len(self.events))
        return len(self.events)

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest event leaves the window."""
        self._trim(now)
        if not self.events:
            return 0.0
        return max(0.0, self.events[0] + self.window - now)


def token_key(token: str) -> str:
    """Counters are keyed by a token digest so that control answers never echo tokens."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class ScheduledFault:
    """A fault for the next ``count`` requests whose path contains ``path_contains``.

    mode: ``error`` answers ``status`` without doing the work; ``lost`` does the work then answers
    502; ``slow`` waits ``delay`` seconds then answers normally; ``429`` answers a rate-limit error;
    ``truncate`` does the work, sends the answer's status and headers (its full ``Content-Length``) and
    half of its body, then closes the connection (a body cut short in transit).
    ``body_contains``: only requests whose body holds this text (a GraphQL mutation's name, say).
    ``answer`` answers ``status`` with the JSON ``body`` without doing the work: Pipefy's singular
    top-level error shapes, e.g. ``{"error": "invalid_token"}`` or ``{"error": {"message": ...,
    "details": {"code": ..., "correlation_id": ...}}}``, with HTTP 200 or another status.
    """

    service: str
    mode: str = "error"
    status: int = 500
    count: int = 1
    path_contains: str = ""
    method: str = ""
    delay: float = 0.0
    body_contains: str = ""
    body: Any = None


class Counters:
    """Request counters per service, token digest and endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.rate_limited: collections.Counter[str] = collections.Counter()
        self.by_endpoint: collections.Counter[str] = collections.Counter()
        self.by_token: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.max_in_window: dict[str, int] = {}

    def count_request(self, service: str, endpoint: str, token: str | None) -> None:
        with self.lock:
            self.requests[service] += 1
            self.by_endpoint[f"{service} {endpoint}"] += 1
            if token:
                self.by_token[f"{service}:{token_key(token)}"] += 1

    def count_429(self, service: str) -> None:
        with self.lock:
            self.rate_limited[service] += 1

    def note_window(self, name: str, seen: int) -> None:
        with self.lock:
            self.max_in_window[name] = max(self.max_in_window.get(name, 0), seen)

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "rate_limited": dict(self.rate_limited),
                "by_endpoint": dict(self.by_endpoint),
                "by_token": dict(self.by_token),
                "faults": dict(self.faults),
                "max_in_window": dict(self.max_in_window),
            }


class SandboxState:
    """The whole mutable state of one sandbox process. Handlers hold ``state.lock`` while they
    read or change data, so concurrent requests see a consistent store."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.clock = SandboxClock()
        self.counters = Counters()
        self.random = random.Random(config.seed)
        self.scheduled_faults: list[ScheduledFault] = []
        # service data objects, set by the service modules (see app.create_app)
        self.services: dict[str, Any] = {}

    def wants_body(self, service: str) -> bool:
        """Whether a scheduled fault of ``service`` looks at request bodies (they are read first then)."""
        with self.lock:
            return any(f.service == service and f.body_contains for f in self.scheduled_faults)

    def take_fault(self, service: str, method: str, path: str, body: bytes = b"") -> ScheduledFault | None:
        """Return the scheduled or random fault this request suffers, if any."""
        with self.lock:
            for fault in self.scheduled_faults:
                if (
                    fault.service == service
                    and fault.path_contains in path
                    and (not fault.method or fault.method.upper() == method.upper())
                    and (not fault.body_contains or fault.body_contains.encode() in body)
                ):
                    fault.count -= 1
                    if fault.count <= 0:
                        self.scheduled_faults.remove(fault)
                    self.counters.faults[f"{service} {fault.mode}"] += 1
                    return fault
            roll = self.random.random()
            if roll < self.config.error_rate:
                self.counters.faults[f"{service} error"] += 1
                return ScheduledFault(service=service, mode="error", status=500)
            if roll < self.config.error_rate + self.config.lost_answer_rate:
                self.counters.faults[f"{service} lost"] += 1
                return ScheduledFault(service=service, mode="lost", status=502)
            if roll < self.config.error_rate + self.config.lost_answer_rate + self.config.truncate_rate:
                self.counters.faults[f"{service} truncate"] += 1
                return ScheduledFault(service=service, mode="truncate")
        return None

    def latency(self) -> float:
        """Seconds to wait before answering an API request."""
        base = self.config.latency_ms / 1000.0
        if self.config.jitter_ms:
            base += self.random.uniform(0, self.config.jitter_ms / 1000.0)
        return base


class FastJSONResponse(JSONResponse):
    """A JSON answer encoded by msgspec: the sandbox serves 500-record pages, and the standard
    encoder's time there would be counted against the client in benchmarks."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@functools.lru_cache(maxsize=8192)
def utc_day(days: int) -> str:
    """``YYYY-MM-DD`` of a day number since the epoch (cached: a page's records share few days)."""
    return (_EPOCH + timedelta(days=days)).strftime("%Y-%m-%d")


def utc_text(ts: float, sep: str = "T", suffix: str = "Z") -> str:
    """A UTC time in whole seconds, ``YYYY-MM-DD<sep>HH:MM:SS<suffix>``, without datetime objects."""
    days, rem = divmod(int(ts), 86_400)
    return f"{utc_day(days)}{sep}{rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}{suffix}"
