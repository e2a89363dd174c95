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
