"""``make bench``: each scenario against a fresh sandbox with realistic latency, one table at the end.

    python -m benchmarks [--latency-ms 100] [--full-size] [--only NAME ...] [--write docs/performance.md]

Throughput is reported against two computed ceilings (benchmarks/ceiling.py): the plan's (the allowance
alone) and the scenario's (the allowance with the concurrency the scenario chose and its latency).
429s come from the sandbox's counters; duplicates from the sandbox's records after an upsert; peak
RSS is the client process's own. No number here is asserted anywhere.

Scenarios named "default arguments" run the operators as a DAG author gets them, at the latency
their name gives; the others at ``--latency-ms``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ceiling import PIPEDRIVE_BURST, PIPEDRIVE_SEARCH_PER_2S, PIPEFY_PER_30S, Ceiling, plan_ceiling

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Scenario:
    name: str
    client: str
    sandbox_args: list[str]
    client_args: dict[str, Any]
    ceiling: Any  # callable(requests, records, latency) -> Ceiling
    plan: Any = None  # callable(records) -> Ceiling: the plan's allowance alone
    processes: int = 1
    latency_ms: float | None = None  # None: --latency-ms
    # run the client once, untimed, under the token "warmup" first: fills the sandbox's render caches
    # (its CPU is the emulator's, not the client's; see docs/performance.md)
    warmup: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)


def start_sandbox(args: list[str], latency_ms: float) -> tuple[subprocess.Popen, dict[str, Any]]:
    info_file = Path(tempfile.mkdtemp(prefix="crm-bench-sbx-")) / "info.json"
    proc = subprocess.Popen([str(BIN / "crm-sandbox"), "--port", "0", "--info-file", str(info_file),
                             "--latency-ms", str(latency_ms), "--prerender", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not info_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("crm-sandbox did not start")
        time.sleep(0.1)
    return proc, json.loads(info_file.read_text())


def run_scenario(s: Scenario, latency_ms: float) -> dict[str, Any]:
    latency_ms = s.latency_ms if s.latency_ms is not None else latency_ms
    sandbox, info = start_sandbox(s.sandbox_args, latency_ms)
    sandbox_cpu_s = -process_cpu_seconds(sandbox.pid)  # what it used from here: its start-up prerenders pages
    try:
        base = {"pipefy_url": info["pipefy_url"], "pipefy_token": next(iter(info["pipefy_tokens"])),
                "pipedrive_url": info["pipedrive_url"], "pipedrive_token": next(iter(info["pipedrive_tokens"])),
                **s.client_args}
        store_dir = tempfile.mkdtemp(prefix="crm-bench-store-")
        if s.warmup:
            warm = subprocess.run([sys.executable, "-m", "benchmarks.scenarios", s.client,
                                   json.dumps({**base, "pipefy_token": "warmup", "pipedrive_token": "warmup",
                                               "path": str(Path(store_dir) / "warmup.jsonl")})],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
            if warm.returncode != 0:
                raise SystemExit(f"scenario {s.name}: warm-up failed (exit {warm.returncode})")
        if s.processes > 1:
            base["store"] = f"file://{store_dir}"
            base["start_at"] = time.time() + 8  # let every process import Airflow before the clock starts
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.scenarios", s.client,
                                   json.dumps({**base, "path": str(Path(store_dir) / f"out{i}.jsonl")})],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for i in range(s.processes)]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                raise SystemExit(f"scenario {s.name} failed (exit {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
        with urllib.request.urlopen(info["control_url"] + "/counters") as resp:
            counters = json.load(resp)
        sandbox_cpu_s += process_cpu_seconds(sandbox.pid)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
    records = sum(r["records"] for r in results)
    seconds = max(r["seconds"] for r in results)
    if s.processes > 1:
        seconds = max(r["seconds"] for r in results)  # all start together: the slowest ends the job
    requests = sum(r["requests"] for r in results)
    ceiling: Ceiling = s.ceiling(requests, records, latency_ms / 1000)
    if results[0].get("concurrency"):  # what the operator chose by itself (default arguments)
        ceiling = dataclasses.replace(ceiling, concurrency=int(results[0]["concurrency"]))
    plan = s.plan(records) if s.plan is not None else None
    return {
        "scenario": s.name,
        "latency_ms": latency_ms,
        "plan_ceiling_per_s": plan.records_per_second if plan else None,
        "plan_ratio": records / seconds / plan.records_per_second if plan else None,
        "duplicates": sum(r.get("duplicates", 0) for r in results) if any("duplicates" in r for r in results)
        else None,
        "records": records,
        "seconds": seconds,
        "records_per_s": records / seconds,
        "ceiling_per_s": ceiling.records_per_second,
        "ratio": records / seconds / ceiling.records_per_second,
        "binding": ceiling.binding,
        "requests": requests,
        "waits": sum(r["waits"] for r in results),
        "http_429": sum(counters["rate_limited"].values()),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "client_cpu_s": sum(r.get("cpu_s", 0.0) for r in results),
        "workers_private_mb": max(r.get("workers_private_mb", 0.0) for r in results),
        "sandbox_cpu_s": sandbox_cpu_s,
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc), 0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scenarios(full_size: bool) -> list[Scenario]:
    def pd_export(plan: str, concurrency: int) -> Any:
        limit = PIPEDRIVE_BURST[plan][0]
        return lambda n, recs, lat: Ceiling(n, recs / max(n, 1), limit, 2.0, concurrency, lat)

    def pf(concurrency: int) -> Any:
        return lambda n, recs, lat: Ceiling(n, recs / max(n, 1), PIPEFY_PER_30S, 30.0, concurrency, lat)

    def pd_upsert(n: int, recs: int, lat: float) -> Ceiling:
        # per new row: one search (10 per 2 s) and one create; the search window binds
        searches = recs
        return Ceiling(searches, 1.0, PIPEDRIVE_SEARCH_PER_2S, 2.0, 1, 2 * lat)

    def pd_upsert_indexed(n: int, recs: int, lat: float) -> Ceiling:
        # the entity listed once (500 a call), then one write per new row, one at a time
        return Ceiling(n, recs / max(n, 1), PIPEDRIVE_BURST["ultimate"][0], 2.0, 1, lat)

    def pd_plan(plan: str) -> Any:
        # full pages of 500; the plan's burst (API-token apps), not the client's safety margin
        return lambda recs: plan_ceiling(recs, -(-recs // 500), PIPEDRIVE_BURST[plan][0], 2.0)

    def pf_plan(requests_per_record: float, page: int = 1) -> Any:
        return lambda recs: plan_ceiling(recs, max(1, int(-(-recs // page) * requests_per_record)), PIPEFY_PER_30S,
                                         30.0)

    def pf_write_plan(existing: int) -> Any:
        # one write per new row, and the pipe's existing cards read once (50 a page: lookup="index")
        return lambda recs: plan_ceiling(recs, recs + -(-existing // 50), PIPEFY_PER_30S, 30.0)

    def pd_write_plan(existing: int) -> Any:
        # one write per new row, and the existing records listed once (500 a call)
        return lambda recs: plan_ceiling(recs, recs + -(-existing // 500), PIPEDRIVE_BURST["ultimate"][0], 2.0)

    defaults: list[Scenario] = []
    for latency in (100.0, 400.0):
        for plan in ("lite", "ultimate"):
            defaults.append(Scenario(
                f"pipedrive export 200,000 deals ({plan.title()}, default arguments, first run, {latency:.0f} ms)",
                "pipedrive_export",
                ["--deals", "200000", "--pipedrive-token", f"bench={plan}"],
                {"pipedrive_token": "bench", "plan": plan, "defaults": True}, pd_export(plan, 1), pd_plan(plan),
                latency_ms=latency))
        defaults.append(Scenario(
            f"pipefy export 100,000 cards (default arguments, first run, {latency:.0f} ms)", "pipefy_export",
            ["--cards-per-phase", "16667", "--pipefy-token", "bench=unlimited"],
            {"pipe_id": "302", "pipefy_token": "bench", "defaults": True}, pf(1), pf_plan(1, 50),
            latency_ms=latency))
    defaults.append(Scenario(
        "pipedrive upsert 2,000 persons (Ultimate, default arguments, 1,000 existing)", "pipedrive_upsert",
        ["--persons", "1000", "--pipedrive-token", "bench=ultimate"],
        {"rows": 2000, "pipedrive_token": "bench", "defaults": True}, pd_upsert_indexed, pd_write_plan(1000),
        latency_ms=400.0))
    defaults.append(Scenario(
        "pipefy upsert 1,000 rows (default arguments)", "pipefy_upsert", ["--cards-per-phase", "5"],
        {"rows": 1000, "defaults": True},
        lambda n, recs, lat: Ceiling(n, recs / max(n, 1), PIPEFY_PER_30S, 30.0, 1, lat),
        pf_write_plan(6 * 5), latency_ms=400.0))  # --cards-per-phase 5 seeds 5 cards in each of pipe 302's 6 phases

    pf_upsert_rows = 2000 if full_size else 300
    pd_upsert_rows = 5000 if full_size else 300
    pd_search_rows = 300  # search-bound (5 rows/s at best): kept small even with --full-size
    phases = [str(3021 + i) for i in range(6)]
    return defaults + [
        Scenario("pipedrive export 20,000 deals (Ultimate, 4 slices)", "pipedrive_export",
                 ["--deals", "20000", "--pipedrive-token", "bench=ultimate"],
                 {"pipedrive_token": "bench", "slices": 4, "plan": "ultimate"}, pd_export("ultimate", 4),
                 pd_plan("ultimate")),
        Scenario("pipedrive export 200,000 deals (Ultimate, 4 slices)", "pipedrive_export",
                 ["--deals", "200000", "--pipedrive-token", "bench=ultimate"],
                 {"pipedrive_token": "bench", "slices": 4, "plan": "ultimate"}, pd_export("ultimate", 4),
                 pd_plan("ultimate")),
        Scenario("pipedrive export 200,000 deals (Lite, 4 slices)", "pipedrive_export",
                 ["--deals", "200000", "--pipedrive-token", "bench=lite"],
                 {"pipedrive_token": "bench", "slices": 4, "plan": "lite"}, pd_export("lite", 4), pd_plan("lite")),
        Scenario("pipefy export 20,000 cards over 6 phases", "pipefy_export",
                 ["--cards-per-phase", "3334", "--pipefy-token", "bench=unlimited", "--pipefy-token",
                  "warmup=unlimited"], {"pipe_id": "302", "phases": phases, "pipefy_token": "bench"}, pf(6), pf_plan(1, 50),
                 warmup=True),
        Scenario(f"pipefy upsert {pf_upsert_rows} rows", "pipefy_upsert", ["--cards-per-phase", "5"],
                 {"rows": pf_upsert_rows},
                 lambda n, recs, lat: Ceiling(n, recs / max(n, 1), PIPEFY_PER_30S, 30.0, 1, lat)),
        Scenario(f"pipedrive upsert {pd_search_rows} persons (search per row)", "pipedrive_upsert",
                 ["--persons", "1000", "--pipedrive-token", "bench=ultimate"],
                 {"rows": pd_search_rows, "pipedrive_token": "bench", "lookup": "search"}, pd_upsert),
        Scenario(f"pipedrive upsert {pd_upsert_rows} persons (index of 1,000 existing)", "pipedrive_upsert",
                 ["--persons", "1000", "--pipedrive-token", "bench=ultimate"],
                 {"rows": pd_upsert_rows, "pipedrive_token": "bench", "lookup": "index"}, pd_upsert_indexed),
        Scenario("4 concurrent tasks, one Lite token, file store (4 x 50,000 deals)", "pipedrive_export",
                 ["--deals", "50000", "--pipedrive-token", "bench=lite"],
                 {"pipedrive_token": "bench", "slices": 1, "plan": "lite"}, pd_export("lite", 4), processes=4),
    ]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | latency ms | records | seconds | records/s | plan ceiling/s | achieved / plan | "
             "ceiling/s | achieved / ceiling | binding | requests | waits | 429s | duplicates | peak RSS MB | "
             "worker processes' own MB | client CPU s | sandbox CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        plan = (f"{r['plan_ceiling_per_s']:,.0f} | {r['plan_ratio']:.2f}" if r.get("plan_ratio") is not None
                else "- | -")
        dups = "-" if r.get("duplicates") is None else str(r["duplicates"])
        lines.append(f"| {r['scenario']} | {r['latency_ms']:.0f} | {r['records']:,} | {r['seconds']:.1f} | "
                     f"{r['records_per_s']:,.0f} | {plan} | {r['ceiling_per_s']:,.0f} | {r['ratio']:.2f} | "
                     f"{r['binding']} | {r['requests']:,} | {r['waits']} | {r['http_429']} | {dups} | "
                     f"{r['peak_rss_mb']:.0f} | {r['workers_private_mb']:.0f} | {r['client_cpu_s']:.1f} | "
                     f"{r['sandbox_cpu_s']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--latency-ms", type=float, default=float(os.environ.get("BENCH_LATENCY_MS", 100)))
    parser.add_argument("--full-size", action="store_true", help="upserts at the issue's sizes (slow: search-bound)")
    parser.add_argument("--only", nargs="*", help="substring of scenario names to run")
    parser.add_argument("--write", help="also write the table to this markdown file")
    args = parser.parse_args()
    rows = []
    for s in scenarios(args.full_size):
        if args.only and not any(o in s.name for o in args.only):
            continue
        print(f"running: {s.name} ...", flush=True)
        row = run_scenario(s, args.latency_ms)
        rows.append(row)
        print(f"  {row['records']:,} records in {row['seconds']:.1f}s = {row['ratio']:.2f} of ceiling, "
              f"{row['http_429']} x 429, {row['peak_rss_mb']:.0f} MB (+ workers' own {row['workers_private_mb']:.0f} MB), CPU client {row['client_cpu_s']:.1f} s, "
              f"sandbox {row['sandbox_cpu_s']:.1f} s", flush=True)
    out = table(rows)
    print()
    print(out)
    if args.write:
        header = (f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
                  f"latency {args.latency_ms:.0f} ms per call; date {time.strftime('%Y-%m-%d')}.\n\n")
        Path(args.write).write_text(header + out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


