"""``crm-sandbox``: local emulators of the Pipefy and Pipedrive APIs on loopback."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from crm_sandbox.core import SandboxConfig


def _token_plans(values: list[str] | None, default: dict[str, str]) -> dict[str, str]:
    if not values:
        return dict(default)
    plans = {}
    for value in values:
        token, _, plan = value.partition("=")
        plans[token] = plan or "unlimited"
    return plans


def parse_args(argv: list[str] | None = None) -> tuple[SandboxConfig, str | None]:
    d = SandboxConfig()
    p = argparse.ArgumentParser(prog="crm-sandbox", description=__doc__)
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port (default)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cards-per-phase", type=int, default=d.pipefy_cards_per_phase)
    p.add_argument("--table-records", type=int, default=d.pipefy_table_records)
    p.add_argument("--deals", type=int, default=d.pipedrive_deals)
    p.add_argument("--persons", type=int, default=d.pipedrive_persons)
    p.add_argument("--organizations", type=int, default=d.pipedrive_organizations)
    p.add_argument("--mail-threads", type=int, default=d.pipedrive_mail_threads)
    p.add_argument("--pipefy-token", action="append", metavar="TOKEN=PLAN",
                   help="a Pipefy token and its plan (starter, business, enterprise, unlimited); repeatable")
    p.add_argument("--pipedrive-token", action="append", metavar="TOKEN=PLAN",
                   help="a Pipedrive token and its plan (lite, growth, premium, ultimate); repeatable")
    p.add_argument("--pipedrive-seats", type=int, default=d.pipedrive_seats)
    p.add_argument("--pipefy-requests-per-window", type=int, default=d.pipefy_requests_per_window)
    p.add_argument("--pipefy-window-seconds", type=float, default=d.pipefy_window_seconds)
    p.add_argument("--pipefy-block-seconds", type=float, default=d.pipefy_block_seconds)
    p.add_argument("--pipefy-max-page", type=int,
                   default=int(os.environ.get("CRM_SANDBOX_PIPEFY_MAX_PAGE") or d.pipefy_max_page),
                   help="largest page served (default 50, or CRM_SANDBOX_PIPEFY_MAX_PAGE); more grants larger pages")
    p.add_argument("--latency-ms", type=float, default=d.latency_ms)
    p.add_argument("--jitter-ms", type=float, default=d.jitter_ms)
    p.add_argument("--error-rate", type=float, default=d.error_rate, help="fraction answered 500")
    p.add_argument("--lost-answer-rate", type=float, default=d.lost_answer_rate,
                   help="fraction done but answered 502")
    p.add_argument("--truncate-rate", type=float, default=d.truncate_rate,
                   help="fraction done but answered with a body cut short (connection closed mid-body)")
    p.add_argument("--prerender", action="store_true",
                   help="render the large record lists' JSON at start (benchmarks; costs memory)")
    p.add_argument("--snapshot", default=None, help="file to load at start and save at exit")
    p.add_argument("--info-file", default=None, help="also write the URLs and tokens as JSON here")
    a = p.parse_args(argv)
    return SandboxConfig(
        host=a.host, port=a.port, seed=a.seed,
        pipefy_cards_per_phase=a.cards_per_phase, pipefy_table_records=a.table_records,
        pipedrive_deals=a.deals, pipedrive_persons=a.persons, pipedrive_organizations=a.organizations,
        pipedrive_mail_threads=a.mail_threads,
        pipefy_tokens=_token_plans(a.pipefy_token, d.pipefy_tokens),
        pipedrive_tokens=_token_plans(a.pipedrive_token, d.pipedrive_tokens),
        pipedrive_seats=a.pipedrive_seats,
        pipefy_requests_per_window=a.pipefy_requests_per_window,
        pipefy_window_seconds=a.pipefy_window_seconds, pipefy_block_seconds=a.pipefy_block_seconds,
        pipefy_max_page=a.pipefy_max_page,
        latency_ms=a.latency_ms, jitter_ms=a.jitter_ms, error_rate=a.error_rate,
        lost_answer_rate=a.lost_answer_rate, truncate_rate=a.truncate_rate, snapshot=a.snapshot, prerender=a.prerender,
    ), a.info_file


def main(argv: list[str] | None = None) -> int:
    config, info_file = parse_args(argv)
    from crm_sandbox.server import SandboxServer

    started = time.monotonic()
    server = SandboxServer(config).start()
    info = server.info()
    info["pid"] = os.getpid()
    if info_file:
        tmp = info_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, info_file)
    print(f"crm-sandbox listening on {server.url} (started in {time.monotonic() - started:.2f}s)")
    print(json.dumps(info, indent=2), flush=True)

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        time.sleep(0.2)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
