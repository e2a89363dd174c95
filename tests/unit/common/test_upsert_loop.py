"""The generic upsert loop: rows written concurrently, never two with one key at once, outcomes and
rejects as a sequential loop would give them."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from airflow_provider_crm.clients.pipedrive.policy import pipedrive_policy
from airflow_provider_crm.clients.pipefy.policy import pipefy_policy
from airflow_provider_crm.common.errors import CrmInputError
from airflow_provider_crm.common.progress import Progress
from airflow_provider_crm.common.ratelimit.limiter import build_limiter
from airflow_provider_crm.common.upsert import UpsertReport
from airflow_provider_crm.common.upsert_loop import PreparedRow, run_upsert, upsert_workers


class FakeStore:
    """Records as a dict, with write latency and a record of how many keys were being written at once."""

    def __init__(self, delay: float = 0.02) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.delay = delay
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.peak_same_key = 0
        self.peak_rows = 0
        self.creates = 0
        self.history: dict[str, list[Any]] = {}

    def prepare(self, row: dict[str, Any]) -> PreparedRow:
        if not row.get("key"):
            raise CrmInputError("key field 'key' is empty")
        return PreparedRow(str(row["key"]).lower(), row)

    def _enter(self, key: str) -> None:
        with self.lock:
            self.active[key] = self.active.get(key, 0) + 1
            self.peak_same_key = max(self.peak_same_key, self.active[key])
            self.peak_rows = max(self.peak_rows, sum(self.active.values()))

    def _leave(self, key: str) -> None:
        with self.lock:
            self.active[key] -= 1

    def find(self, row: PreparedRow) -> dict[str, Any] | None:
        self._enter(str(row.key))
        try:
            time.sleep(self.delay)
            return self.records.get(str(row.key))
        finally:
            self._leave(str(row.key))

    def create(self, row: PreparedRow) -> tuple[dict[str, Any], bool]:
        if row.payload.get("value") == "bad":
            raise CrmInputError(f"field 'value': 'bad' is not allowed (key {row.key})")
        if row.payload.get("value") == "bug":
            raise RuntimeError("a bug, not a bad row")
        time.sleep(self.delay)
        with self.lock:
            self.creates += 1
            record = {"id": len(self.records) + 1, "value": row.payload.get("value")}
            self.records[str(row.key)] = record
        self.history.setdefault(str(row.key), []).append(row.payload.get("value"))
        return record, True

    def changes(self, record: dict[str, Any], row: PreparedRow) -> Any:
        return record["value"] != row.payload.get("value")

    def update(self, record: dict[str, Any], changes: Any, row: PreparedRow) -> None:
        time.sleep(self.delay)
        record["value"] = row.payload.get("value")
        self.history.setdefault(str(row.key), []).append(row.payload.get("value"))

    def finish(self, record: dict[str, Any], row: PreparedRow, created: bool) -> None:
        return None

    def ident(self, record: dict[str, Any]) -> Any:
        return record["id"]


def _run(rows: list[dict[str, Any]], steps: FakeStore, workers: int, tmp_path: Any) -> UpsertReport:
    report = UpsertReport(str(tmp_path / "rejects.jsonl"), task_label="test upsert")
    run_upsert(rows, steps, report, Progress(None, "rows"), workers=workers)
    report.close()
    return report


def test_concurrent_rows_give_the_outcomes_of_a_sequential_loop(tmp_path):
    # 5 keys, each appearing 12 times in a row of 5 with a new value: created once, then updated in order
    rows = [{"key": f"K{i % 5}", "value": f"v{i // 5}"} for i in range(60)]
    rows += [{"key": "", "value": "x"}, {"key": "K0", "value": "v11"}]  # an empty key; an unchanged row
    steps = FakeStore()
    report = _run(rows, steps, 8, tmp_path)
    assert report.counts == {"created": 5, "updated": 55, "unchanged": 1, "failed": 1}
    assert steps.creates == 5
    assert all(history == [f"v{n}" for n in range(12)] for history in steps.history.values())  # input order
    assert steps.peak_same_key == 1  # never two rows of one key at once
    assert steps.peak_rows > 1  # but rows of different keys at once
    assert "key field 'key' is empty" in (tmp_path / "rejects.jsonl").read_text()


def test_one_worker_writes_one_row_at_a_time(tmp_path):
    steps = FakeStore(delay=0.005)
    report = _run([{"key": f"K{i}", "value": "a"} for i in range(10)], steps, 1, tmp_path)
    assert report.counts["created"] == 10 and steps.peak_rows == 1


def test_a_bad_row_is_rejected_and_a_bug_stops_the_task(tmp_path):
    steps = FakeStore(delay=0.001)
    report = _run([{"key": "A", "value": "bad"}, {"key": "B", "value": "ok"}], steps, 4, tmp_path)
    assert report.counts["failed"] == 1 and report.counts["created"] == 1
    assert "key a" in (tmp_path / "rejects.jsonl").read_text()
    with pytest.raises(RuntimeError, match="a bug"):
        _run([{"key": "C", "value": "bug"}, {"key": "D", "value": "ok"}], FakeStore(0.001), 4, tmp_path)


@pytest.mark.parametrize(("service", "plan", "overrides", "expected"), [
    ("pipedrive", "lite", {}, 10),  # 19 per 2 s after the safety margin: 10 a second
    ("pipedrive", "ultimate", {}, 32),  # 57 a second, capped at the connection pool
    ("pipefy", "unlimited", {"requests_per_30s": 30}, 1),  # one request a second allows one row at a time
])
def test_default_workers_follow_the_plan(service, plan, overrides, expected):
    policy = {"pipedrive": pipedrive_policy, "pipefy": pipefy_policy}[service](plan, overrides=overrides)
    limiter = build_limiter(policy, "token", store="memory")
    assert upsert_workers(limiter) == expected
    assert upsert_workers(limiter, cap=2) == min(2, expected)
    assert upsert_workers(limiter, rows=3) == min(3, expected)  # never more workers than rows
    assert upsert_workers(limiter, rows=0) == 1
