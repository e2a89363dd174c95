"""Progress lines for long tasks, so a person watching the task log knows where it is and when it ends.

A start line says what the task does; then, every ``every`` seconds, how many items so far, the rate,
the time left (when the total is known) and the requests and rate-limit waits so far; an end line
says how many in how long. Counting is cheap enough to call once per record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any


def _rate(per_second: float) -> str:
    """Items per second as a person reads them: "0.4/s" for a slow upsert, not "0/s"."""
    return f"{per_second:,.1f}/s" if per_second < 10 else f"{per_second:,.0f}/s"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts items and logs a progress line every ``every`` seconds and, when the total is known, at
    each quarter of it (so a short task that ends within ``every`` seconds still shows where it was).

    :param log: the task's logger.
    :param what: what is counted, plural (``deals``, ``rows``).
    :param total: how many are expected, if known (an estimate is fine: the time left is approximate).
    :param stats: the hook's limiter stats (``requests``, ``waits``, ``wait_seconds``), for the lines.
    :param every: seconds between progress lines.
    :param detail: returns more to say in each line (an upsert's outcome counts, say).
    """

    def __init__(self, log: logging.Logger | Any, what: str, total: int | None = None, stats: Any = None,
                 every: float = 10.0, detail: Callable[[], str] | None = None) -> None:
        self.log = log
        self.what = what
        self.total = total if total and total > 0 else None
        self.stats = stats
        self.every = every
        self.detail = detail
        self.count = 0
        self.started = time.monotonic()
        self._next = self.started + every
        self._quarter = 0  # the last quarter of the total a line was logged for
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        # called once per record: callers count from one thread at a time (an export's writer; the
        # upsert loop under its own lock), so the lock is taken only to log
        self.count += n
        now = time.monotonic()
        quarter = 4 * self.count // self.total if self.total and self.count < self.total else 0
        if now < self._next and quarter <= self._quarter:
            return
        with self._lock:
            if now >= self._next or quarter > self._quarter:
                self._next = now + self.every
                self._quarter = max(self._quarter, quarter)
                self.log.info("Progress: %s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-6, (now or time.monotonic()) - self.started)
        rate = self.count / elapsed
        parts = [f"{self.count:,} {self.what}" + (f" of ~{self.total:,} ({min(100, 100 * self.count // self.total)}%)"
                                                   if self.total else ""),
                 _rate(rate), f"elapsed {_duration(elapsed)}"]
        if self.total and rate > 0:
            parts.append(f"about {_duration(max(0, self.total - self.count) / rate)} left")
        if self.detail is not None:
            parts.append(self.detail())
        if self.stats is not None:
            parts.append(f"{self.stats.requests:,} requests, {self.stats.waits} rate-limit waits "
                         f"({self.stats.wait_seconds:.1f}s)")
        return ", ".join(parts)

    def done(self, where: str = "") -> None:
        elapsed = time.monotonic() - self.started
        self.log.info("Done: %s %s in %s (%s)%s", f"{self.count:,}", self.what, _duration(elapsed),
                      _rate(self.count / max(elapsed, 1e-6)), f", {where}" if where else "")


def summary_table(summary: dict[str, Any]) -> str:
    """A task summary as short aligned lines for the log, instead of a dict's one-line repr."""
    width = max((len(str(k)) for k in summary), default=0)
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            # rows of their own (an upsert's sample errors), each cut to a screen's width
            pad = "\n" + " " * (width + 4)
            items = [_cut(", ".join(f"{k}={v}" for k, v in item.items())) for item in value[:10]]
            value = pad.join(items) + (f"{pad}... ({len(value)} in all)" if len(value) > 10 else "")
        elif isinstance(value, list):
            value = ", ".join(map(str, value[:10])) + (f" ... ({len(value)} in all)" if len(value) > 10 else "")
        lines.append(f"  {str(key).ljust(width)}  {value}")
    return "\n".join(lines)


def _cut(text: str, width: int = 140) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def describe_limits(limiter: Any) -> str:
    """The limits a task runs under, for its start line: plan, windows, budgets, and where they are shared."""
    windows = ", ".join(f"{w.limit} {'/'.join(sorted(w.kinds))} per {w.seconds:g}s" for w in limiter.windows)
    budgets = ", ".join(f"{a.limit:,} {a.name} per {a.period}" for a in limiter.allowances if a.limit)
    return (f"plan {limiter.plan}: {windows}" + (f"; {budgets}" if budgets else "")
            + f"; shared through {limiter.store.description}")
