"""Streaming export writers, row readers and the upsert report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from decimal import Decimal

import pytest

from airflow_provider_crm.common.errors import CrmInputError
from airflow_provider_crm.common.export import open_export_writer
from airflow_provider_crm.common.rows import read_rows
from airflow_provider_crm.common.upsert import UpsertReport


def test_jsonl_export_is_written_and_renamed_into_place(tmp_path):
    target = tmp_path / "out" / "cards.jsonl"
    with open_export_writer(str(target), "jsonl") as writer:
        writer.write({"id": 1, "due": date(2024, 8, 1), "amount": Decimal("10.50")})
        writer.write({"id": 2, "tags": ["a", "b"]})
        assert not target.exists(), "the target must not appear before the export completes"
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines == [{"id": 1, "due": "2024-08-01", "amount": "10.50"}, {"id": 2, "tags": ["a", "b"]}]
    assert writer.count == 2
    assert list(target.parent.iterdir()) == [target], "no partial file may be left behind"


def test_failed_export_leaves_previous_file_untouched(tmp_path):
    target = tmp_path / "deals.jsonl"
    target.write_text('{"id": "old"}\n')
    with pytest.raises(RuntimeError), open_export_writer(str(target), "jsonl") as writer:
        writer.write({"id": "new"})
        raise RuntimeError("API failed mid-export")
    assert target.read_text() == '{"id": "old"}\n'
    assert list(tmp_path.iterdir()) == [target]


def test_csv_export_keeps_nested_values_as_json(tmp_path):
    target = tmp_path / "deals.csv"
    with open_export_writer(str(target), "csv", fieldnames=["id", "labels", "note"]) as writer:
        writer.write({"id": 1, "labels": ["x", "y"], "note": None})
    rows = list(csv.DictReader(target.open()))
    assert [(r["id"], json.loads(r["labels"]), r["note"]) for r in rows] == [("1", ["x", "y"], "")]


def test_csv_header_holds_declared_columns_then_every_key_any_record_has(tmp_path):
    """A tombstone after 5,000 live deals still gets its column; declared columns come first, and
    stay in the header even when no record has them, so the header is the same run after run."""
    target = tmp_path / "deals.csv"
    with open_export_writer(str(target), "csv", columns=["id", "title", "Onboarding plan"]) as writer:
        for n in range(5000):
            writer.write({"id": n, "title": f"Deal {n}", "value": n})
        writer.write({"id": 7, "_deleted": True})
    with target.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["id", "title", "Onboarding plan", "value", "_deleted"]
    assert len(rows) == 5001 and rows[-1] == {"id": "7", "title": "", "Onboarding plan": "", "value": "",
                                               "_deleted": "True"}
    assert list(tmp_path.iterdir()) == [target]


def test_csv_with_fieldnames_writes_exactly_those_columns(tmp_path):
    target = tmp_path / "x.csv"
    with open_export_writer(str(target), "csv", fieldnames=["id"]) as w:
        w.write({"id": 1})
        w.write({"id": 2, "surprise": True})
    assert target.read_text().splitlines() == ["id", "1", "2"]


def test_csv_without_records_still_has_its_header(tmp_path):
    target = tmp_path / "empty.csv"
    with open_export_writer(str(target), "csv", columns=["id", "title"]):
        pass
    assert target.read_text().splitlines() == ["id,title"]


def test_unknown_format_is_named():
    with pytest.raises(CrmInputError, match="parquet"), open_export_writer("/tmp/x", "parquet"):
        pass


def test_read_rows_from_each_source(tmp_path):
    assert list(read_rows([{"a": 1}])) == [{"a": 1}]
    assert list(read_rows('[{"a": 2}]')) == [{"a": 2}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"a": 3}\n\n{"a": 4}\n')
    assert list(read_rows(str(jsonl))) == [{"a": 3}, {"a": 4}]
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("email,name\nx@example.com,\n")
    assert list(read_rows(str(csv_file))) == [{"email": "x@example.com", "name": None}]


def test_read_rows_names_the_bad_line(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(CrmInputError, match="line 2"):
        list(read_rows(str(bad)))
    with pytest.raises(CrmInputError, match="row 2"):
        list(read_rows([{"a": 1}, "not a dict"]))
    with pytest.raises(CrmInputError, match="does not exist"):
        list(read_rows(str(tmp_path / "missing.csv")))


def test_upsert_report_writes_rejects_and_applies_threshold(tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    report = UpsertReport(str(rejects), task_label="persons upsert")
    report.record("created", 1)
    report.record("updated", 2)
    report.reject(3, {"email": "bad"}, CrmInputError("field 'email' is not an email"))
    report.check_threshold(0.5)  # 1 of 3 failed: allowed
    saved = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert saved == [
        {"row": 3, "error": "field 'email' is not an email", "error_type": "CrmInputError", "data": {"email": "bad"}}
    ]
    with pytest.raises(CrmInputError, match="1 of 3 rows failed"):
        report.check_threshold(0.2)
    assert report.summary()["created"] == 1 and report.summary()["rejects_path"] == str(rejects)


def test_clean_rerun_removes_stale_rejects(tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    rejects.write_text('{"row": 1}\n')
    report = UpsertReport(str(rejects))
    report.record("unchanged")
    report.check_threshold(0.0)
    assert not rejects.exists()


def test_merge_parallel_yields_everything_and_raises_the_first_error():
    from airflow_provider_crm.common.fanin import merge_parallel

    items = sorted(merge_parallel([lambda: iter(range(0, 500)), lambda: iter(range(500, 1000))], 2, max_buffered=10))
    assert items == list(range(1000))

    def broken():
        yield 1
        raise RuntimeError("slice 2 failed")

    with pytest.raises(RuntimeError, match="slice 2 failed"):
        list(merge_parallel([lambda: iter(range(10_000)), broken], 2, max_buffered=5))


def test_export_tuning_applies_while_execute_runs_and_is_undone_after_it_even_on_error():
    import sys

    from airflow_provider_crm.common.export import EXPORT_SWITCH_INTERVAL_S, tuned_for_export

    seen: list[float] = []

    @tuned_for_export
    def execute(fail: bool) -> str:
        seen.append(sys.getswitchinterval())
        if fail:
            raise RuntimeError("export failed")
        return "summary"

    before = sys.getswitchinterval()
    assert execute(False) == "summary"
    with pytest.raises(RuntimeError):
        execute(True)
    assert seen == [EXPORT_SWITCH_INTERVAL_S, EXPORT_SWITCH_INTERVAL_S] != [before, before]
    assert sys.getswitchinterval() == before


KILLED_EXPORT = """
import sys, time
from airflow_provider_crm.common.export import open_export_writer
with open_export_writer(sys.argv[1], "jsonl", owner="dag.export") as writer:
    for n in range(100_000):
        writer.write({"id": n, "padding": "x" * 100})
    print("CRM-WRITING", flush=True)
    time.sleep(60)
"""


def _killed_export(target) -> None:
    """An export process killed mid-write (SIGKILL: no cleanup runs), as a worker dying would be."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # Airflow may log a line or two first
        if line.strip() == "CRM-WRITING":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_the_next_attempt_removes_what_killed_attempts_left(tmp_path):
    target = tmp_path / "2026-12-01.jsonl"
    _killed_export(target)
    first = [p.name for p in tmp_path.iterdir()]
    _killed_export(target)  # the retry, killed too: it removed the first attempt's partial file
    second = [p.name for p in tmp_path.iterdir()]
    assert len(first) == len(second) == 1 and first != second and second[0].endswith(".partial")
    # a partial of an earlier run of the same export (another file name), dead for a while
    stale = tmp_path / ".dag.export.2026-11-30.jsonl.0badf00d.partial"
    stale.write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / ".dag.export.2026-11-29.jsonl.0c0ffee0.partial"  # perhaps another run still writing
    fresh.write_text("{}")
    other = tmp_path / ".other.task.2026-12-01.jsonl.12345678.partial"  # another export's
    other.write_text("{}")
    with open_export_writer(str(target), "jsonl", owner="dag.export") as writer:
        writer.write({"id": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, fresh.name, other.name])
