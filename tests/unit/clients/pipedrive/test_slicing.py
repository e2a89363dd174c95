"""Balanced time slices (clients/pipedrive/slicing.py): nothing lost or repeated, idle workers take over work."""

from __future__ import annotations

import bisect
import itertools
import random
import threading
import time

import pytest

from airflow_provider_crm.clients.pipedrive.slicing import Slice, fetch_balanced_pages
from airflow_provider_crm.common.fanin import chunks


def _dataset(n: int, start: int, end: int, skew: float, seed: int = 7) -> list[dict]:
    """Records with update times in [start, end), bunched towards the end as CRM data is."""
    rnd = random.Random(seed)
    times = sorted(int(end - 1 - (end - 1 - start) * rnd.random() ** skew) for _ in range(n))
    return [{"id": i, "t": t} for i, t in enumerate(times)]



def fetch_balanced(fetch, position, slices, workers, *, page_size=250, **kwargs):
    """The records of fetch_balanced_pages, the fake API's records cut into pages of ``page_size``."""
    pages = fetch_balanced_pages(lambda kind, a, b: chunks(fetch(kind, a, b), page_size),
                                 lambda page: [position(record) for record in page], slices, workers,
                                 page_size=page_size, **kwargs)
    for page in pages:
        yield from page

class FakeApi:
    """Pages of ``page`` records of [a, b) in ascending time, ``latency`` seconds each; counts concurrency."""

    def __init__(self, records: list[dict], page: int = 50, latency: float = 0.002) -> None:
        self.records, self.page, self.latency = records, page, latency
        self.times = [r["t"] for r in records]
        self.in_flight = self.max_in_flight = self.requests = 0
        self.lock = threading.Lock()

    def fetch(self, kind: str, a: int, b: int):
        lo, hi = bisect.bisect_left(self.times, a), bisect.bisect_left(self.times, b)
        for first in range(lo, max(hi, lo + 1), self.page):
            with self.lock:
                self.in_flight += 1
                self.requests += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            time.sleep(self.latency)
            with self.lock:
                self.in_flight -= 1
            yield from self.records[first:min(first + self.page, hi)]


def _initial(start: int, end: int, n: int, kind: str = "live") -> list[Slice]:
    step = (end - start) / n
    cuts = [start + round(step * i) for i in range(n)] + [end]
    return [Slice(kind, a, b) for a, b in itertools.pairwise(cuts)]


@pytest.mark.parametrize("skew", [1.0, 0.2, 0.05])
def test_every_record_once_and_workers_kept_busy(skew):
    records = _dataset(20_000, 0, 1_000_000, skew)
    api = FakeApi(records)
    stats: dict[str, int] = {}
    out = list(fetch_balanced(api.fetch, lambda r: r["t"], _initial(0, 1_000_000, 4), 4,
                              min_split_records=200, stats=stats))
    assert sorted(r["id"] for r in out) == list(range(20_000))
    if skew < 1:  # most records in the last slice: the idle workers must have taken parts of it
        assert stats["splits"] >= 3
        assert api.max_in_flight == 4


def test_cut_inside_a_second_shared_by_many_records_loses_nothing():
    # 3,000 records in only 30 distinct seconds: cuts fall between records of the same second
    records = [{"id": i, "t": 1000 + i // 100} for i in range(3000)]
    api = FakeApi(records, page=7)
    out = list(fetch_balanced(api.fetch, lambda r: r["t"], _initial(1000, 1030, 2), 3, min_split_records=20))
    assert sorted(r["id"] for r in out) == list(range(3000))


def test_records_without_an_update_time_are_kept():
    records = [{"id": 0, "t": None}, {"id": 1, "t": 5}, {"id": 2, "t": 6}]

    def fetch(kind, a, b):
        yield from (r for r in records if r["t"] is None and a == 0 or r["t"] is not None and a <= r["t"] < b)

    out = list(fetch_balanced(fetch, lambda r: r["t"], _initial(0, 10, 2), 2))
    assert sorted(r["id"] for r in out) == [0, 1, 2]


def test_first_error_is_raised_after_the_records_before_it():
    def fetch(kind, a, b):
        yield {"id": a, "t": a}
        if a > 0:
            raise RuntimeError(f"page after {a} failed")

    got = []
    with pytest.raises(RuntimeError, match="page after 5 failed"):
        for record in fetch_balanced(fetch, lambda r: r["t"], _initial(0, 10, 2), 2):
            got.append(record["id"])
    assert 5 in got


def test_closing_early_stops_the_workers():
    records = _dataset(50_000, 0, 10_000, 1.0)
    api = FakeApi(records, page=100, latency=0.001)
    gen = fetch_balanced(api.fetch, lambda r: r["t"], _initial(0, 10_000, 4), 4, max_buffered=500)
    assert len([next(gen) for _ in range(10)]) == 10
    gen.close()
    requests = api.requests
    time.sleep(0.1)
    assert api.requests - requests <= 4  # at most the pages already being fetched
    assert not [t for t in threading.enumerate() if t.name.startswith("crm-slice")]


def test_an_idle_worker_splits_as_soon_as_the_busy_slice_has_shown_its_density():
    # one slice holds everything, the other is empty: its worker is idle after one request and must
    # take half of the busy slice once that slice's first batch is in, not after its own wait times out
    records = _dataset(5_000, 0, 100_000, 1.0)
    records = [{**r, "t": 50_000 + r["t"] // 2} for r in records]
    api = FakeApi(records, page=250, latency=0.1)
    pages_before_split: list[int] = []
    fetch = api.fetch

    def fetch_recording(kind, a, b):
        if a > 50_000:  # a piece cut from the busy slice
            pages_before_split.append(api.requests)
        yield from fetch(kind, a, b)

    stats: dict[str, int] = {}
    out = list(fetch_balanced(fetch_recording, lambda r: r["t"], _initial(0, 100_000, 2), 2,
                              min_split_records=200, page_size=250, stats=stats))
    assert sorted(r["id"] for r in out) == list(range(5_000))
    assert stats["splits"] >= 1
    # requests so far: the empty slice's one and the busy slice's first two (page 2 left as page 1 was taken)
    assert pages_before_split[0] <= 3
