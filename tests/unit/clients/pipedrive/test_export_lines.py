"""Export pages to JSON Lines (clients/pipedrive/export_lines.py): the same lines and counts whether a
worker process encodes them or the calling thread does, in the order the pages were handed over."""

from __future__ import annotations

import json
import multiprocessing
import os

import msgspec

from airflow_provider_crm.clients.pipedrive.export_lines import PageEncoder, encode_page, spare_processes
from airflow_provider_crm.clients.pipedrive.fields import FieldMap, normalise_definition
from airflow_provider_crm.common.rawpage import RawPage

TIER, NOTE = "b" * 40, "c" * 40
FMAP = FieldMap("deals", [normalise_definition(d) for d in (
    {"field_code": "title", "field_name": "Title", "is_custom_field": False},
    {"field_code": TIER, "field_name": "Tier", "is_custom_field": True, "field_type": "enum",
     "options": [{"id": 3, "label": "Gold"}]},
    {"field_code": NOTE, "field_name": "Note", "is_custom_field": True, "field_type": "text"})])


def _page(first: int, n: int) -> RawPage:
    records = [{"id": i, "title": f"deal {i}", "update_time": f"2026-03-01T08:00:{i % 60:02d}Z",
                "status": "deleted" if i % 7 == 0 else "open", "is_archived": i % 5 == 0,
                "custom_fields": {TIER: 3 if i % 2 else None, NOTE: {"nested": [i, "x"]}}}
               for i in range(first, first + n)]
    return RawPage(msgspec.json.encode(records))


def _lines(results: list[tuple[bytes, int, dict[str, int]]]) -> list[dict]:
    return [json.loads(line) for block, _, _ in results for line in block.splitlines()]


def test_a_worker_process_writes_what_the_calling_thread_writes_in_the_same_order():
    pages = [_page(i * 50, 50) for i in range(12)] + [_page(1000, 50).head(20)]
    outputs = {}
    for processes in (0, 1):
        with PageEncoder(processes, labels=True, archived_too=True) as encoder:
            results = [lines for page in pages for lines in encoder.submit(page, FMAP)]
            results += list(encoder.finish())
        outputs[processes] = results
    assert outputs[0] == outputs[1]
    records = _lines(outputs[1])
    assert [r["id"] for r in records] == list(range(600)) + list(range(1000, 1020))
    assert records[1]["Tier"] == "Gold" and records[2]["Tier"] is None and records[1]["Note"] == {"nested": [1, "x"]}
    assert "custom_fields" not in records[1] and records[7]["_deleted"] is True and records[5]["_archived"] is True
    totals = {kind: sum(counts[kind] for _, _, counts in outputs[1]) for kind in ("records", "deleted", "archived")}
    assert sum(written for _, written, _ in outputs[1]) == 620 == sum(totals.values())
    assert totals["deleted"] == sum(1 for r in records if r.get("_deleted"))


def test_lists_of_records_are_encoded_after_the_pages_before_them():
    with PageEncoder(1, labels=False, archived_too=False) as encoder:
        results = list(encoder.submit(_page(0, 30), FMAP))
        results += list(encoder.submit([{"id": 99, "custom_fields": {TIER: 3}}], FMAP))
        results += list(encoder.finish())
    records = _lines(results)
    assert [r["id"] for r in records] == [*range(30), 99] and records[-1]["Tier"] == 3  # labels=False: the id


def test_encode_page_reads_only_the_kept_records():
    block, written, counts = encode_page(_page(0, 10).head(4), None, True, False)
    assert [json.loads(line)["id"] for line in block.splitlines()] == [0, 1, 2, 3] and written == 4
    assert counts == {"records": 3, "deleted": 1, "archived": 0}  # id 0 is deleted (and archived, not asked for)


def _report_spare(queue: multiprocessing.Queue) -> None:
    queue.put(spare_processes())


def test_a_daemonic_process_starts_no_worker_process():
    # a Celery prefork task runs in a daemonic process, which may not start processes of its own
    # (tests/e2e/test_celery.py checks it in billiard's pool, Celery's own)
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_report_spare, args=(queue,), daemon=True)
    child.start()
    assert queue.get(timeout=30) == 0
    child.join(timeout=30)
    if len(os.sched_getaffinity(0)) > 1:
        assert spare_processes() >= 1  # the same machine, not daemonic
