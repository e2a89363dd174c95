"""More Pipedrive exports against the sandbox: v1 entities without updated_until, archived deals, mail."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import requests

from airflow_provider_crm.hooks.pipedrive import PipedriveHook
from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator, PipedriveMailExportOperator

pytestmark = pytest.mark.integration


def _state(sandbox, entity):
    return requests.get(f"{sandbox.url}/pipedrive/_state/{entity}", timeout=10).json()


def _now(sandbox) -> datetime:
    now = requests.get(f"{sandbox.url}/_sandbox/clock", timeout=10).json()["now"]
    return datetime.fromtimestamp(int(now), timezone.utc)


def _advance(sandbox, seconds):
    requests.post(f"{sandbox.url}/_sandbox/clock", json={"advance": seconds}, timeout=10).raise_for_status()


def _ids(path) -> list:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_notes_incremental_runs_do_not_repeat_records_updated_after_the_interval(connections, context, sandbox,
                                                                                tmp_path):
    """v1 notes have updated_since but no updated_until: the end must still hold."""
    hook = PipedriveHook()
    t0 = _now(sandbox)
    first_end = t0 + timedelta(seconds=1)
    _advance(sandbox, 10)
    changed = hook.create("notes", {"content": "after run 1's interval", "deal_id": 1})
    # run 1 executes late (after the change): the note belongs to run 2 only
    PipedriveExportOperator(task_id="e", entity="notes", path=str(tmp_path / "1.jsonl")).execute(
        context(t0 - timedelta(days=900), first_end))
    second_end = _now(sandbox) + timedelta(seconds=1)
    PipedriveExportOperator(task_id="e", entity="notes", path=str(tmp_path / "2.jsonl")).execute(
        context(first_end, second_end))
    first, second = _ids(tmp_path / "1.jsonl"), _ids(tmp_path / "2.jsonl")
    assert changed["id"] not in first and second == [changed["id"]]
    live = {n["id"] for n in _state(sandbox, "notes") if not n.get("is_deleted")}
    assert sorted(first + second) == sorted(live)


def test_archived_deals_are_exported_when_asked(connections, context, sandbox, tmp_path):
    archived = {d["id"] for d in _state(sandbox, "deals") if d.get("is_archived") and not d.get("is_deleted")}
    assert archived, "the sandbox seeds some archived deals"
    path = tmp_path / "deals.jsonl"
    summary = PipedriveExportOperator(task_id="e", entity="deals", path=str(path), full=True,
                                      include_archived=True).execute(context())
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["id"] for r in rows if r.get("_archived")} == archived and summary["archived"] == len(archived)
    assert len({r["id"] for r in rows}) == len(rows)


def test_mail_export_writes_threads_with_their_messages(connections, context, tmp_path):
    path = tmp_path / "inbox.jsonl"
    summary = PipedriveMailExportOperator(task_id="m", folder="inbox", path=str(path)).execute(context())
    threads = [json.loads(line) for line in path.read_text().splitlines()]
    assert threads and summary["records"] == len(threads)
    assert summary["messages"] == sum(len(t["messages"]) for t in threads) > 0
    assert set(summary["rate_limit"]) >= {"waits", "wait_seconds", "rate_limited"}
