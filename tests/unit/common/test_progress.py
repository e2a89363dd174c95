"""What a person watching a long task reads: progress with rate and time left, and a readable summary."""

from __future__ import annotations

import logging

from airflow_provider_crm.common import progress as progress_module
from airflow_provider_crm.common.progress import Progress, summary_table


class Stats:
    requests, waits, wait_seconds = 42, 2, 1.5


def test_progress_lines_every_interval_with_rate_time_left_and_waits(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    progress = Progress(logging.getLogger("t"), "deals", total=10_000, stats=Stats(), every=10)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(4000):  # 16 s: one progress line, at 10 s
            progress.add()
            now[0] += 0.004  # 250 deals a second
        progress.done("written to /out/deals.jsonl")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("Progress: ") and "of ~10,000 (" in lines[0] and "/s" in lines[0]
    assert "left" in lines[0] and "42 requests, 2 rate-limit waits (1.5s)" in lines[0]
    assert "2,50" in lines[0] and "(25%)" in lines[0] and "about 30s left" in lines[0]
    assert lines[1] == "Done: 4,000 deals in 16s (250/s), written to /out/deals.jsonl"


def test_unknown_total_gives_no_time_left():
    progress = Progress(logging.getLogger("t"), "cards")
    progress.add(5)
    assert "left" not in progress.line() and progress.line().startswith("5 cards, ")


def test_summary_is_a_short_aligned_table():
    table = summary_table({"entity": "deals", "records": 12, "rate_limit": {"requests": 3, "waits": 0},
                           "ids": list(range(12))})
    assert table.splitlines() == [
        "  entity      deals",
        "  records     12",
        "  rate_limit  requests=3, waits=0",
        "  ids         0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ... (12 in all)",
    ]


def test_a_slow_rate_reads_with_a_decimal(monkeypatch, caplog):
    """An upsert at a few rows a second said "0/s"; now it says how slow."""
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    progress = Progress(logging.getLogger("t"), "rows", total=10, every=10)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(5):
            now[0] += 2.5
            progress.add()
        progress.done()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("Progress: 3 rows of ~10 (30%)")  # the first quarter passed, at 7.5 s
    assert ", 0.4/s, " in lines[0] and "about 18s left" in lines[0]
    assert lines[-1] == "Done: 5 rows in 12s (0.4/s)"


def test_summary_rows_of_dicts_get_a_line_each_cut_to_the_screen():
    """An upsert's sample errors were one dict-repr line running off the screen."""
    long_reason = "persons: field 'Source': 'Newsletter' is not one of its options " + "x" * 200
    table = summary_table({"failed": 2, "errors": [{"row": 4, "error": long_reason}, {"row": 5, "error": "bad"}]})
    lines = table.splitlines()
    assert lines[0] == "  failed  2"
    assert lines[1].startswith("  errors  row=4, error=persons: field 'Source'") and lines[1].endswith("...")
    assert len(lines[1]) <= 150
    assert lines[2] == "          row=5, error=bad"
    assert "{'row'" not in table


def test_a_short_task_with_a_known_total_logs_each_quarter(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    progress = Progress(logging.getLogger("t"), "rows", total=8, every=10)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(8):  # 4 s in all: never 10 s between lines
            now[0] += 0.5
            progress.add()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["Progress: 2 rows of ~8 (25%)", "Progress: 4 rows of ~8 (50%)",
                                                      "Progress: 6 rows of ~8 (75%)"]
    assert all("left" in line for line in lines)
