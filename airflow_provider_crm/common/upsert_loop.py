"""One upsert loop for both services: rows written concurrently, never two rows with one key at once;
each service supplies how a row is found, compared, created and updated. No Airflow import, so the
API clients' steps can use it."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from airflow_provider_crm.common.errors import CrmError


@dataclass
class PreparedRow:
    """A row made ready for writing: its normalised key and whatever the service sends."""

    key: Hashable
    payload: Any


class UpsertSteps(Protocol):
    """What a service supplies to :func:`run_upsert`: how to read a row's key and find, compare, create
    and update its record. Each step raises :class:`CrmError` for a row that cannot be written."""

    def prepare(self, row: dict[str, Any]) -> PreparedRow:
        """Validate a row and normalise its key; no request is made here."""

    def find(self, row: PreparedRow) -> Any | None:
        """The existing record with the row's key, or None when the caller should create it."""

    def create(self, row: PreparedRow) -> tuple[Any, bool]:
        """Create the record at most once (under the key's claim): the record, and whether this call made it."""

    def changes(self, record: Any, row: PreparedRow) -> Any:
        """What differs between the record and the row; falsy when nothing does."""

    def update(self, record: Any, changes: Any, row: PreparedRow) -> None:
        """Write ``changes`` to the record."""

    def finish(self, record: Any, row: PreparedRow, created: bool) -> None:
        """Anything after the write (a move to a phase, say)."""

    def ident(self, record: Any) -> Any:
        """The record's id, for the summary."""


def upsert_one(steps: UpsertSteps, row: PreparedRow) -> tuple[str, Any]:
    """One row: find, else create; compare; update when something differs; finish. Returns (outcome, id)."""
    record = steps.find(row)
    created = False
    if record is None:
        record, created = steps.create(row)
    outcome = "created"
    if not created:
        changes = steps.changes(record, row)
        outcome = "updated" if changes else "unchanged"
        if changes:
            steps.update(record, changes, row)
    steps.finish(record, row, created)
    return outcome, steps.ident(record)


def upsert_workers(limiter: Any, cap: int | None = None, write_seconds: float = 1.0, rows: int | None = None) -> int:
    """How many rows to write at once by default: enough to keep the plan's write allowance busy when a
    write takes up to ``write_seconds``, never more than ``cap`` (or 32) nor than the ``rows`` there
    are (when known). The limiter, not this number, holds the rate, so asking for more rows in flight
    than the window admits costs only waits.
    """
    workers = int(limiter.in_flight(write_seconds, cap or MAX_UPSERT_WORKERS, kind="write", headroom=1.0))
    return workers if rows is None else min(workers, max(1, rows))


# the hooks' HTTP connection pool per host (common/http.py POOL_SIZE): more threads would queue for it
MAX_UPSERT_WORKERS = 32


def run_upsert(rows: Iterable[dict[str, Any]], steps: UpsertSteps, report: Any, progress: Any,
               *, workers: int = 1) -> None:
    """Upsert ``rows`` through ``steps``, ``workers`` rows at a time, never two rows with one key at once.

    Rows with the same key are written in their input order by one worker, so a later row updates what
    an earlier one created. A row that fails with a :class:`CrmError` goes to the report's rejects; any
    other error stops the loop and is raised once the rows in flight are done.
    """
    lock = threading.Lock()
    waiting: dict[Hashable, deque[tuple[int, dict[str, Any], PreparedRow]]] = {}

    def settle(index: int, row: dict[str, Any], outcome: tuple[str, Any] | CrmError) -> None:
        with lock:
            if isinstance(outcome, CrmError):
                report.reject(index, row, outcome)
            else:
                report.record(*outcome)
            progress.add()

    def lane(item: tuple[int, dict[str, Any], PreparedRow] | None) -> None:
        while item is not None:
            index, row, prepared = item
            try:
                settle(index, row, upsert_one(steps, prepared))
            except CrmError as err:
                settle(index, row, err)
            with lock:
                queue = waiting[prepared.key]
                item = queue.popleft() if queue else None
                if item is None:
                    del waiting[prepared.key]

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="upsert") as pool:
        running: set[Future[None]] = set()
        for index, row in enumerate(rows, start=1):
            try:
                prepared = steps.prepare(row)
            except CrmError as err:
                settle(index, row, err)
                continue
            with lock:
                if prepared.key in waiting:  # its key is being written: it follows in that lane
                    waiting[prepared.key].append((index, row, prepared))
                    continue
                waiting[prepared.key] = deque()
            # a bounded queue: rows are read (from a file, say) only as fast as they are written
            while len(running) >= 2 * max(1, workers):
                done, running = wait(running, return_when=FIRST_COMPLETED)
                _raise_failure(done)
            running.add(pool.submit(lane, (index, row, prepared)))
        done, _ = wait(running)
        _raise_failure(done)


def _raise_failure(done: set[Future[None]]) -> None:
    for future in done:
        future.result()
