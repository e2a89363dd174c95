"""Parallel export of a time range whose records are not spread evenly over it.

Equal time slices are only as fast as the fullest one: in a CRM most records were updated lately,
so of four equal slices of a year two or three finish at once and one fetches nearly everything
(measured: four slices ran at the speed of 1.3). Here each slice is fetched in ascending order of
update time, its position is known, and a worker that runs out of slices takes the second half of
what the busiest slice has not reached yet: the busy slice stops at the cut, the worker starts there.
Cuts are whole seconds, as the API's ``updated_since`` / ``updated_until`` are, so nothing is read
by both or by neither.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from airflow_provider_crm.common.fanin import drain_batches

# a page is a list of records or a RawPage: anything that ``page[:n]`` cuts to its first n records
FetchPages = Callable[[Any, int, int], Iterator[Any]]


@dataclass
class Slice:
    """``[start, end)`` in epoch seconds of one stream (``kind``: e.g. live, archived, deleted)."""

    kind: Any
    start: int
    end: int
    position: int | None = None  # update time of the last record taken
    taken: int = 0
    running: bool = False

    def remaining_estimate(self) -> float:
        """Records still ahead, assuming the density seen so far (0 before the first record)."""
        if self.position is None or self.taken == 0:
            return 0.0
        seen_span = max(1, self.position - self.start + 1)
        return self.taken / seen_span * max(0, self.end - self.position - 1)


class SliceScheduler:
    """Hands out slices to workers and splits the busiest one when none is left.

    :param slices: the initial slices, fetched first in the order given.
    :param min_split_records: do not split a slice expected to hold fewer records than this
        (a split wastes the rest of one page: the busy slice stops inside it).
    """

    def __init__(self, slices: Sequence[Slice], min_split_records: int) -> None:
        self.pending = list(slices)
        self.min_split_records = min_split_records
        self.running: list[Slice] = []
        self.splits = 0
        self._cond = threading.Condition()

    def take(self, stop: threading.Event) -> Slice | None:
        """The next slice to fetch, or None when everything is fetched or being fetched to its end."""
        with self._cond:
            while not stop.is_set():
                if self.pending:
                    first = self.pending.pop(0)
                    first.running = True
                    self.running.append(first)
                    return first
                cut = self._split()
                if cut is not None:
                    return cut
                if not self.running:
                    return None
                self._cond.wait(0.2)  # woken by progressed() or finish(); the timeout is a safety net
            return None

    def _split(self) -> Slice | None:
        busiest = max(self.running, key=Slice.remaining_estimate, default=None)
        if busiest is None or busiest.position is None:
            return None
        if busiest.remaining_estimate() < self.min_split_records:
            return None
        cut = busiest.position + 1 + (busiest.end - busiest.position - 1) // 2
        if not busiest.position < cut < busiest.end:
            return None
        piece = Slice(busiest.kind, cut, busiest.end, running=True)
        busiest.end = cut
        self.running.append(piece)
        self.splits += 1
        return piece

    def accept_page(self, piece: Slice, positions: Sequence[int | None]) -> int:
        """Record a page of ``piece`` whose records have these positions (ascending); return how many
        of them, from the first, fall before its (moved) end. One lock per page, not per record."""
        with self._cond:
            kept = 0
            for position in positions:
                if position is not None:
                    if position >= piece.end:
                        break
                    if piece.position is None or position > piece.position:
                        piece.position = position
                kept += 1
            piece.taken += kept
            return kept

    def progressed(self) -> None:
        """Wake idle workers: a running slice took more records, so it may now be worth splitting.

        Called per batch, not per record: an idle worker waiting for a slice to show its density
        would otherwise sleep out its timeout (0.2 s, two rounds of requests at 100 ms)."""
        with self._cond:
            self._cond.notify_all()

    def finish(self, piece: Slice) -> None:
        with self._cond:
            piece.running = False
            self.running.remove(piece)
            self._cond.notify_all()


def fetch_balanced_pages(fetch_pages: FetchPages, positions: Callable[[Any], Sequence[int | None]],
                         slices: Sequence[Slice], workers: int, *, min_split_records: int = 2000,
                         max_buffered: int = 2000, page_size: int = 500,
                         stats: dict[str, int] | None = None) -> Iterator[Any]:
    """Yield the pages (lists of records) of every slice, fetched by ``workers`` threads, splitting
    slices as they run. Per record this costs no lock, queue or generator step: a slice accepts a
    whole page and is cut inside it at its moved end.

    :param fetch_pages: ``fetch_pages(kind, start, end)`` yields the pages of ``[start, end)``, records
        in ascending update time (the request bounds; the iterator is abandoned when the slice is cut
        short).
    :param positions: the update times of a page's records in epoch seconds (None where a record has
        none), in order.
    :param slices: the initial slices.
    :param workers: threads fetching at once.
    :param min_split_records: smallest expected remainder worth a split.
    :param max_buffered: about how many records may wait between the fetchers and the consumer
        (memory stays flat).
    :param page_size: about how many records a page holds (with ``max_buffered``, sizes the queue).
    :param stats: if given, ``splits`` is set in it at the end.
    """
    scheduler = SliceScheduler(slices, min_split_records)
    done = object()
    out: queue.Queue[Any] = queue.Queue(maxsize=max(2, max_buffered // max(1, page_size)))
    stop = threading.Event()

    def work() -> None:
        try:
            while (piece := scheduler.take(stop)) is not None:
                pages = fetch_pages(piece.kind, piece.start, piece.end)
                try:
                    for page in pages:
                        if stop.is_set():
                            break
                        times = positions(page)
                        kept = scheduler.accept_page(piece, times)
                        if kept:
                            out.put(page if kept == len(times) else page[:kept])
                        if kept < len(times):
                            break  # the slice was cut short: the rest belongs to the piece split off
                        scheduler.progressed()
                finally:
                    close = getattr(pages, "close", None)
                    if close is not None:
                        close()
                    scheduler.finish(piece)
        except BaseException as err:
            out.put(err)
        finally:
            out.put(done)

    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crm-slice") as pool:
        for _ in range(workers):
            pool.submit(work)
        try:
            yield from drain_batches(out, done, workers, stop, flatten=False)
        finally:
            if stats is not None:
                stats["splits"] = scheduler.splits
