"""Client side of each benchmark scenario, run in its own process so that its peak RSS is its own.

Usage (by benchmarks/__main__.py): python -m benchmarks.scenarios NAME JSON_ARGS
Prints one JSON line: records, seconds, requests, waits, rate_limited, peak_rss_mb.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any


def _connections(args: dict[str, Any]) -> None:
    store = args.get("store", "memory")
    if "pipefy_url" in args:
        os.environ["AIRFLOW_CONN_PIPEFY_DEFAULT"] = json.dumps({
            "conn_type": "pipefy", "host": args["pipefy_url"], "password": args["pipefy_token"],
            "extra": {"rate_limit_store": store, "plan": "unlimited"}})
    if "pipedrive_url" in args:
        os.environ["AIRFLOW_CONN_PIPEDRIVE_DEFAULT"] = json.dumps({
            "conn_type": "pipedrive", "host": args["pipedrive_url"], "password": args["pipedrive_token"],
            "extra": {"rate_limit_store": store, "plan": args.get("plan", "ultimate"), "seats": 50}})


def _context(start: datetime | None = None, end: datetime | None = None) -> dict[str, Any]:
    from airflow_provider_crm.common import watermark

    watermark.backend = watermark.MemoryVariables()  # no Airflow Variables outside a task

    class TI:
        def xcom_push(self, key: str, value: Any) -> None:
            pass

    return {"ti": TI(), "data_interval_start": start, "data_interval_end": end, "outlet_events": None}


def pipedrive_export(args: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator

    if args.get("defaults"):  # as a DAG author gets it: a first run, no interval, no tuning
        op = PipedriveExportOperator(task_id="bench", entity="deals", path=args["path"])
        summary = op.execute(_context())
    else:
        end = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=1)
        op = PipedriveExportOperator(task_id="bench", entity="deals", path=args["path"], slices=args.get("slices", 1))
        summary = op.execute(_context(end - timedelta(days=800), end))
    return {"records": summary["records"], "concurrency": summary.get("parallel"), **summary["rate_limit"]}


def pipefy_export(args: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_crm.operators.pipefy import PipefyExportCardsOperator

    if args.get("defaults"):
        op = PipefyExportCardsOperator(task_id="bench", pipe_id=args["pipe_id"], path=args["path"])
    else:
        op = PipefyExportCardsOperator(task_id="bench", pipe_id=args["pipe_id"], path=args["path"],
                                       phases=args["phases"], full=True, max_workers=len(args["phases"]))
    summary = op.execute(_context())
    return {"records": summary["records"], "concurrency": summary.get("parallel"), **summary["rate_limit"]}


def pipefy_upsert(args: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_crm.operators.pipefy import PipefyUpsertCardsOperator

    rows = [{"Requester": f"bench{i}@example.com", "Priority": "High", "Hours": str(i % 9)}
            for i in range(args["rows"])]
    op = PipefyUpsertCardsOperator(task_id="bench", pipe_id="302", rows=rows, key_field="Requester",
                                   **({} if args.get("defaults") else {"max_workers": 1}))
    summary = op.execute(_context())
    result = {"records": summary["total"], "stopped": time.monotonic(), "concurrency": summary.get("parallel"),
              **summary["rate_limit"]}
    # duplicates, read back from the sandbox once the clock has stopped: cards per key value
    from airflow_provider_crm.hooks.pipefy import PipefyHook

    keys = [item.get("value") for card in PipefyHook().iter_pipe_cards("302") for item in card.get("fields") or []
            if item["field"]["id"] == "requester" and str(item.get("value", "")).startswith("bench")]
    return {**result, "duplicates": len(keys) - len(set(keys))}


def pipedrive_upsert(args: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_crm.operators.pipedrive import PipedriveUpsertOperator

    rows = [{"email": f"bench{i}@example.com", "name": f"Bench {i}"} for i in range(args["rows"])]
    tuning = {} if args.get("defaults") else {"lookup": args.get("lookup", "search"), "max_workers": 1}
    op = PipedriveUpsertOperator(task_id="bench", entity="persons", rows=rows, key_field="email", **tuning)
    summary = op.execute(_context())
    result = {"records": summary["total"], "stopped": time.monotonic(), "concurrency": summary.get("parallel"),
              **summary["rate_limit"]}
    # duplicates, read back from the sandbox once the clock has stopped: persons per e-mail
    emails = [e["value"].lower() for p in op.hook.iter_records("persons") for e in p.get("emails") or []
              if str(e.get("value", "")).startswith("bench")]
    return {**result, "duplicates": len(emails) - len(set(emails))}


SCENARIOS = {
    "pipedrive_export": pipedrive_export,
    "pipefy_export": pipefy_export,
    "pipefy_upsert": pipefy_upsert,
    "pipedrive_upsert": pipedrive_upsert,
}


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    args.setdefault("path", os.path.join(tempfile.mkdtemp(prefix="crm-bench-"), "out.jsonl"))
    _connections(args)
    # imports happen before the clock starts: the bench measures the export, not Airflow's import time
    import airflow_provider_crm.operators.pipedrive  # noqa: F401
    import airflow_provider_crm.operators.pipefy  # noqa: F401
    if args.get("start_at"):
        time.sleep(max(0.0, args["start_at"] - time.time()))
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = SCENARIOS[name](args)
    result["seconds"] = result.pop("stopped", time.monotonic()) - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # an export's worker processes, once ended
    # the job's own CPU (threads and worker processes included), not the imports before the clock
    result["cpu_s"] = (usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
                       + children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime)
    # the largest worker process's peak (its pages shared with the client when forked count in both)
    result["workers_peak_rss_mb"] = children.ru_maxrss / 1024 if children.ru_maxrss > children_before.ru_maxrss else 0.0
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
