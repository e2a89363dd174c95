"""Client side of each benchmark scenario, run in its own process so that its peak RSS is its own.

Usage (by benchmarks/__main__.py): python -m benchmarks.scenarios NAME JSON_ARGS
Prints one JSON line: records, seconds, requests, waits, rate_limited, peak_rss_mb, cpu_s, workers_private_mb.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
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
    workers = WorkerMemory()
    workers.start()
    result = SCENARIOS[name](args)
    result["seconds"] = result.pop("stopped", time.monotonic()) - started
    workers.stop.set()
    workers.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # an export's worker processes, once ended
    # the job's own CPU (threads and worker processes included), not the imports before the clock
    result["cpu_s"] = (usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
                       + children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime)
    result["workers_private_mb"] = workers.peak_private_kb / 1024
    print(json.dumps(result), flush=True)


class WorkerMemory(threading.Thread):
    """The most memory this process's children held of their own at once, polled every 50 ms.

    An export's worker processes are forked: their RSS counts every page they still share with the
    client, so it says nothing about what they add. Their private pages (``Private_Clean`` +
    ``Private_Dirty`` of ``/proc/PID/smaps_rollup``, summed over the children) do. (Airflow runs a
    few short commands while importing lazily, ldconfig and file: a few hundred KB.)"""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_private_kb = 0

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak_private_kb = max(self.peak_private_kb, sum(map(_private_kb, _children())))


def _children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
                pids += [int(pid) for pid in f.read().split()]
        except OSError:
            continue
    return pids


def _private_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except (OSError, ValueError, IndexError):
        return 0


if __name__ == "__main__":
    main()
