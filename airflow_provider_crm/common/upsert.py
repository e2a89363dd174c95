"""Bookkeeping for bulk upserts: outcome counts, a rejects file, the failure threshold (the loop itself
is :mod:`.upsert_loop`)."""

from __future__ import annotations

import logging
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_crm.common import jsoncodec
from airflow_provider_crm.common.errors import CrmInputError
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
