"""Several processes on one token: the shared store keeps them under the limit with zero 429s;
without it they overrun. A Pipefy block caused by one process is respected by another."""

from __future__ import annotations

import multiprocessing

import pytest
import requests

pytestmark = pytest.mark.integration

LIMIT_PER_2S = 20  # Lite with an API token: what the sandbox enforces
REQUESTS_PER_PROCESS = 15
PROCESSES = 4


def _worker(base_url: str, token: str, store: str, results: multiprocessing.Queue) -> None:
    from airflow_provider_crm.clients.pipedrive.policy import pipedrive_policy
    from airflow_provider_crm.common.ratelimit.limiter import build_limiter

    limiter = build_limiter(pipedrive_policy("lite"), token, store=store, max_wait=60)
    statuses = []
    session = requests.Session()
    for _ in range(REQUESTS_PER_PROCESS):
        with limiter.request(cost=2):
            resp = session.get(f"{base_url}/api/v1/users/me", headers={"x-api-token": token}, timeout=10)
        limiter.after_response(resp.status_code, resp.headers)
        statuses.append(resp.status_code)
    results.put(statuses)


def _run_processes(sandbox, token: str, store: str) -> tuple[list[int], dict]:
    requests.post(f"{sandbox.url}/_sandbox/tokens", json={"service": "pipedrive", "token": token, "plan": "lite"},
                  timeout=10).raise_for_status()
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(sandbox.info()["pipedrive_url"], token, store, results))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    statuses = [s for _ in procs for s in results.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    counters = requests.get(f"{sandbox.url}/_sandbox/counters", timeout=10).json()
    return statuses, counters


def _max_window(counters: dict) -> int:
    return max(v for k, v in counters["max_in_window"].items() if k.startswith("pipedrive:"))


def test_file_store_keeps_four_processes_within_the_limit(sandbox, tmp_path):
    statuses, counters = _run_processes(sandbox, "proc-file-token", f"file://{tmp_path}")
    assert len(statuses) == PROCESSES * REQUESTS_PER_PROCESS
    assert statuses.count(429) == 0
    assert _max_window(counters) <= LIMIT_PER_2S


def test_memory_store_per_process_overruns(sandbox):
    statuses, counters = _run_processes(sandbox, "proc-memory-token", "memory")
    # each process allows itself 19 per 2 s: together they send up to 76 in a window, over Lite's 20
    assert _max_window(counters) > LIMIT_PER_2S
    assert statuses.count(429) > 0




@pytest.mark.redis
def test_redis_store_keeps_four_processes_within_the_limit(sandbox, redis_url):
    statuses, counters = _run_processes(sandbox, "proc-redis-token", redis_url)
    assert statuses.count(429) == 0
    assert _max_window(counters) <= LIMIT_PER_2S


def _pipefy_caller(store: str, token: str, results: multiprocessing.Queue) -> None:
    from airflow_provider_crm.clients.pipefy.policy import pipefy_policy
    from airflow_provider_crm.common.errors import CrmWaitTooLongError
    from airflow_provider_crm.common.ratelimit.limiter import build_limiter

    limiter = build_limiter(pipefy_policy(), token, store=store, max_wait=5)
    try:
        limiter.before_request()
        results.put("sent")
    except CrmWaitTooLongError as err:
        results.put(f"waited: {err.reason}")


@pytest.mark.parametrize("store_kind", ["file", "redis"])
def test_pipefy_block_from_one_process_is_respected_by_another(tmp_path, store_kind, request):
    store = request.getfixturevalue("redis_url") if store_kind == "redis" else f"file://{tmp_path}"
    from airflow_provider_crm.clients.pipefy.policy import pipefy_policy
    from airflow_provider_crm.common.ratelimit.limiter import build_limiter

    build_limiter(pipefy_policy(), "blocked-token", store=store).after_response(429, {})
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()
    proc = ctx.Process(target=_pipefy_caller, args=(store, "blocked-token", results))
    proc.start()
    outcome = results.get(timeout=60)
    proc.join(timeout=30)
    assert outcome == "waited: paused: HTTP 429: the service refused a request"  # the reason, in the other process
