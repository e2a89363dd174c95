"""A request's window slot is held while it is in flight and counts for one window from its answer, in
every store (issue 18: slots stamped when claimed let a late-arriving request through on a loaded
machine). Windows here are short policies of their own, so the tests take a second, not minutes."""

from __future__ import annotations

import sqlite3
import time

import pytest

from airflow_provider_crm.clients.pipedrive.policy import pipedrive_policy
from airflow_provider_crm.common.errors import CrmWaitTooLongError
from airflow_provider_crm.common.ratelimit.limiter import build_limiter
from airflow_provider_crm.common.ratelimit.policy import ALL_KINDS, LimitPolicy, Window
from airflow_provider_crm.common.ratelimit.stores import FileStore

WINDOW_S = 0.4


@pytest.fixture(params=["memory", "file", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        return "memory"
    if request.param == "file":
        return f"file://{tmp_path}"
    return request.getfixturevalue("redis_url")


def one_a_window(store: str, name: str, max_wait: float = 5.0):
    policy = LimitPolicy("svc", "test", (Window("burst", 1, WINDOW_S, ALL_KINDS),))
    return build_limiter(policy, f"{name}-{time.time_ns()}", store=store, max_wait=max_wait)


def test_a_slot_counts_while_its_request_is_in_flight_however_long(store):
    limiter = one_a_window(store, "in-flight", max_wait=0.1)
    slot = limiter.before_request()
    time.sleep(WINDOW_S * 1.5)  # the answer takes longer than a window
    # stamped when claimed, the slot would have left the window: the server may not have counted it yet
    with pytest.raises(CrmWaitTooLongError):
        limiter.before_request()
    limiter.release(slot)
    assert limiter.counting("burst") == 1


def test_a_slot_counts_for_one_window_from_its_answer(store):
    limiter = one_a_window(store, "answered")
    slot = limiter.before_request()
    time.sleep(WINDOW_S)
    limiter.release(slot)
    answered = time.monotonic()
    limiter.release(slot)  # twice is harmless: still one window from the first answer
    with limiter.request():
        waited = time.monotonic() - answered
    assert WINDOW_S * 0.9 <= waited < WINDOW_S * 2, waited


def test_a_request_that_is_never_answered_frees_its_slot_after_its_hold_and_a_window(store):
    limiter = one_a_window(store, "dead")
    limiter.before_request(hold=0.2)  # its process dies before the answer
    wait, slot, _ = limiter._try_windows("read")
    assert slot is None and 0 < wait <= WINDOW_S  # waits a window at most, then looks again
    time.sleep(0.2 + WINDOW_S + 0.05)
    assert limiter.counting("burst") == 0
    with limiter.request():
        pass


def test_a_file_store_opened_later_forgets_the_expired_slots_of_tokens_no_longer_used(tmp_path):
    def rows() -> int:
        with sqlite3.connect(tmp_path / "crm-values.sqlite") as conn:
            return int(conn.execute("SELECT COUNT(*) FROM crm_slots").fetchone()[0])

    with one_a_window(f"file://{tmp_path}", "abandoned").request():
        pass
    assert rows() == 1  # this token is never used again: no later slot of its window sweeps it
    FileStore(tmp_path)  # a task opens the file while the slot still counts: kept
    assert rows() == 1
    time.sleep(WINDOW_S + 0.05)
    FileStore(tmp_path)
    assert rows() == 0


def test_a_refusing_window_gives_back_the_slots_held_in_the_others(store):
    limiter = build_limiter(pipedrive_policy("lite"), f"search-{time.time_ns()}", store=store)
    for _ in range(10):  # the search window: 10 per 2 s
        with limiter.request(kind="search"):
            pass
    wait, slot, reason = limiter._try_windows("search")
    assert slot is None and reason.startswith("search")
    assert limiter.counting("burst") == 10  # the refused search's burst slot was dropped
    with limiter.request(kind="read"):
        assert limiter.counting("burst") == 11


def test_request_that_waits_too_long_gives_its_quota_back():
    limiter = build_limiter(pipedrive_policy("lite"), "slots-refund", store="memory", max_wait=0.01)
    for _ in range(20):
        with limiter.request(kind="write", cost=10):
            pass
    before = limiter.quota_status()
    with pytest.raises(CrmWaitTooLongError):
        limiter.before_request(kind="write", cost=10)
    assert limiter.quota_status() == before


def test_latency_is_measured_from_the_slot_to_the_answer_without_the_wait_for_the_window():
    """Exports size their concurrency by the latency of their first requests; a wait for the window
    (other tasks on the token) is not latency, and counting it asked for 8 slices on a 3-per-2-s plan."""
    limiter = one_a_window("memory", "latency")
    with limiter.request():
        time.sleep(0.05)
    mark = limiter.stats.answers_mark()
    assert limiter.stats.latency_since(mark) is None
    started = time.monotonic()
    with limiter.request():  # waits about a window for the first slot to leave
        time.sleep(0.05)
    assert time.monotonic() - started >= WINDOW_S
    latency = limiter.stats.latency_since(mark)
    assert latency is not None and 0.04 <= latency < 0.2


def test_a_full_server_window_pauses_only_when_it_is_not_all_ours():
    """Pipedrive uses its whole window: the answer that fills the server's window says remaining 0, and
    when our own window is full too the limiter already waits as long as a pause would. A full server
    window beside a window of ours that is not full means another client spends the token: pause."""
    full = {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"}
    ours = build_limiter(pipedrive_policy("lite"), f"ours-{time.time_ns()}", store="memory")
    for _ in range(20):
        with ours.request():
            pass
    ours.after_response(200, full)  # the 20th answer
    assert ours._blocked_for() == 0
    shared = build_limiter(pipedrive_policy("lite"), f"shared-{time.time_ns()}", store="memory")
    for _ in range(15):
        with shared.request():
            pass
    shared.after_response(200, full)
    assert shared._blocked_for() > 1
    margin = build_limiter(pipedrive_policy("lite", safety=0.95), f"margin-{time.time_ns()}", store="memory")
    for _ in range(19):
        with margin.request():
            pass
    margin.after_response(200, full)  # 19 of ours cannot fill a window of 20
    assert margin._blocked_for() > 1
