"""Bulk upserts: one loop for both services (rows written concurrently, one key at a time) and its
bookkeeping (outcome counts, a rejects file, the failure threshold)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Hashable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, Any, Protocol

from airflow.sdk import ObjectStoragePath

from airflow_provider_crm.common import jsoncodec
from airflow_provider_crm.common.errors import CrmError, CrmInputError
from airflow_provider_crm.common.export import as_path

log = logging.getLogger(__name__)

OUTCOMES = ("created", "updated", "unchanged", "failed")


class UpsertReport:
    """Counts outcomes and writes failed rows, with their error, to a JSON Lines rejects file.

    :param rejects_path: where failed rows go (written only if a row fails); None keeps them in the
        summary only (first 20).
    :param task_label: names the task in messages.
    """

    def __init__(self, rejects_path: ObjectStoragePath | str | None = None, task_label: str = "upsert") -> None:
        self.rejects_path = as_path(rejects_path) if rejects_path else None
        self.task_label = task_label
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.ids: dict[str, list[Any]] = {"created": [], "updated": [], "unchanged": []}
        self.sample_errors: list[dict[str, Any]] = []
        self._rejects: IO[str] | None = None

    def record(self, outcome: str, record_id: Any = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.counts[outcome] += 1
        if record_id is not None and outcome in self.ids and len(self.ids[outcome]) < 1000:
            self.ids[outcome].append(record_id)

    def reject(self, row_index: int, row: dict[str, Any], error: BaseException | str) -> None:
        """Count a failed row and write it, with the reason, to the rejects file."""
        self.counts["failed"] += 1
        reason = str(error)
        entry = {"row": row_index, "error": reason, "error_type": type(error).__name__ if not isinstance(error, str) else "", "data": row}
        if len(self.sample_errors) < 20:
            self.sample_errors.append({"row": row_index, "error": reason})
        log.warning("%s: row %d rejected: %s", self.task_label, row_index, reason)
        if self.rejects_path is not None:
            if self._rejects is None:
                self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
                self._rejects = self.rejects_path.open("w", encoding="utf-8")
            self._rejects.write(jsoncodec.dumps(entry).decode() + "\n")
            self._rejects.flush()

    def describe(self) -> str:
        """The outcome counts so far, for progress lines."""
        return ", ".join(f"{name} {count}" for name, count in self.counts.items())

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._rejects is not None:
            self._rejects.close()
            self._rejects = None
        elif self.rejects_path is not None and self.rejects_path.exists():
            # a rerun that now succeeds must not leave the previous run's rejects behind
            self.rejects_path.unlink()

    def check_threshold(self, max_failure_ratio: float) -> None:
        """Raise when more than ``max_failure_ratio`` of the rows failed (0 = any failure fails)."""
        self.close()
        if not self.total or not self.counts["failed"]:
            return
        ratio = self.counts["failed"] / self.total
        if ratio > max_failure_ratio:
            where = f"; see {self.rejects_path}" if self.rejects_path else ""
            raise CrmInputError(
                f"{self.task_label}: {self.counts['failed']} of {self.total} rows failed "
                f"({ratio:.0%} > allowed {max_failure_ratio:.0%}){where}. First error: "
                f"row {self.sample_errors[0]['row']}: {self.sample_errors[0]['error']}"
            )

    def summary(self) -> dict[str, Any]:
        return {
            **self.counts,
            "total": self.total,
            "rejects_path": str(self.rejects_path) if self.rejects_path and self.counts["failed"] else None,
            "ids": [*self.ids["created"], *self.ids["updated"], *self.ids["unchanged"]][:1000],
            "errors": self.sample_errors[:5],
        }


# -- the loop ------------------------------------------------------------------------------------------
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


def upsert_workers(limiter: Any, cap: int | None = None, write_seconds: float = 1.0) -> int:
    """How many rows to write at once by default: enough to keep the plan's write allowance busy when a
    write takes up to ``write_seconds``, never more than ``cap`` (or 32). The limiter, not this
    number, holds the rate, so asking for more rows in flight than the window admits costs only waits.
    """
    return int(limiter.in_flight(write_seconds, cap or MAX_UPSERT_WORKERS, kind="write", headroom=1.0))


# the hooks' HTTP connection pool per host (common/http.py POOL_SIZE): more threads would queue for it
MAX_UPSERT_WORKERS = 32


def run_upsert(rows: Iterable[dict[str, Any]], steps: UpsertSteps, report: UpsertReport, progress: Any,
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
