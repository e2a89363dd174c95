"""What a service's limits are, as the limiter engine reads them: windows, allowances, the pause after a
refusal, and how the service's answers state what is left.

Each service builds its :class:`LimitPolicy` in ``clients/<service>/policy.py`` (plans, quotas, the
headers it sends); the engine (:mod:`.limiter`) knows no service. This module imports nothing but the
standard library, so provider metadata can read the plan lists without loading the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# request kinds the limiter tells apart: a search may have a window of its own, a write an allowance
ALL_KINDS = frozenset({"read", "write", "search"})
DEFAULT_SAFETY = 0.95  # stay this fraction under each window limit


@dataclass(frozen=True)
class Window:
    """A sliding-window limit that applies to some request kinds (``seconds``: the server's window; the
    engine counts each request in it from the request's answer, see :mod:`.stores`)."""

    name: str
    limit: int
    seconds: float
    kinds: frozenset[str]


@dataclass(frozen=True)
class Allowance:
    """A budget over a calendar period (``month``, or a UTC ``day``).

    :param stated: the service states this allowance's real limit in its answers (see
        :class:`Signals`); the stated limit then wins over the configured one for every process.
    """

    name: str
    limit: int | None
    period: str  # "month" | "day"
    kinds: frozenset[str]  # which request kinds spend it
    by_cost: bool  # spend `cost` (token budget) instead of 1 per request
    hard: bool  # True: refuse for good (monthly quota); False: retryable after the reset
    stated: bool = False


@dataclass(frozen=True)
class Signals:
    """What one answer's headers say about the limits.

    :param reset: seconds until the server's window resets (relative, not an epoch), or how long to wait.
    :param remaining: requests left in the server's window.
    :param left: allowance name -> what the server says is left of it this period.
    :param stated: allowance name -> the limit the server states for it.
    """

    reset: float | None = None
    remaining: float | None = None
    limit: float | None = None  # the window's limit, as the server states it
    left: Mapping[str, float] = field(default_factory=dict)
    stated: Mapping[str, int] = field(default_factory=dict)


def number(value: str | None) -> float | None:
    """A header's number, or None when it is missing or not a number."""
    if value in (None, ""):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except ValueError:
        return None


@dataclass(frozen=True)
class LimitPolicy:
    """One token's limits at one service.

    :param service: names the service in log lines, errors and store keys.
    :param plan: the account's plan, for messages.
    :param windows: sliding windows every request of their kinds takes a slot in.
    :param allowances: per-period budgets (quotas, token budgets).
    :param block_seconds: how long every process pauses after a refusal (HTTP 429) that says no wait.
    """

    service: str
    plan: str
    windows: tuple[Window, ...]
    allowances: tuple[Allowance, ...] = ()
    block_seconds: float = 1.0

    def read_headers(self, headers: Mapping[str, str]) -> Signals:
        """The limits an answer states (``headers`` with lower-case names). By default the common
        ``x-ratelimit-reset`` / ``retry-after`` and ``x-ratelimit-remaining``; a service whose answers
        state more (budgets left) extends it."""
        return Signals(reset=number(headers.get("x-ratelimit-reset")) or number(headers.get("retry-after")),
                       remaining=number(headers.get("x-ratelimit-remaining")),
                       limit=number(headers.get("x-ratelimit-limit")))


def scaled(limit: int, safety: float) -> int:
    """A window limit kept ``safety`` under the server's, at least 1."""
    return max(1, int(limit * safety))
