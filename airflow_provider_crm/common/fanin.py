"""Several producer threads (phases, time slices) feeding one consumer through a bounded queue of record
batches: :func:`merge_parallel` runs them, :func:`drain_batches` is the consuming side."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter). If ``items`` fails, the items before the
    error come first, as a shorter list, then the error."""
    batch: list[Any] = []
    try:
        for item in items:
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
    except Exception:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def drain_batches(out: queue.Queue[Any], done: object, producers: int, stop: threading.Event,
                  flatten: bool = True) -> Iterator[Any]:
    """Yield the items of every batch put on ``out`` (the batches themselves unless ``flatten``) until
    each of ``producers`` has put ``done``.

    :param out: the queue the producers put batches (lists), errors and ``done`` on.
    :param done: the marker a producer puts last, once, whatever happened.
    :param producers: how many producers will put ``done``.
    :param stop: set here when the consumer stops (finished, failed or closed early), so producers
        stop producing; their remaining puts are drained so none of them stays blocked on a full queue.

    The first error a producer puts is raised here, after the items put before it.
    """
    remaining = producers
    try:
        while remaining:
            item = out.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            elif flatten:
                yield from item
            else:
                yield item
    finally:
        stop.set()
        while remaining:
            try:
                if out.get(timeout=0.1) is done:
                    remaining -= 1
            except queue.Empty:
                continue


def merge_parallel(sources: Sequence[Callable[[], Iterator[Any]]], max_workers: int,
                   max_buffered: int = 1000, batch_size: int = 250) -> Iterator[Any]:
    """Run each source (a phase, a time slice) in a thread and yield their items as they come.

    The buffer between the fetching threads and the writer is bounded (about ``max_buffered`` items),
    so memory stays flat whatever the record count; items cross it in batches of ``batch_size``,
    because a queue hand-off per record costs as much CPU as decoding the record. The first error in
    any source is raised here, after the items it produced before failing; closing the iterator
    stops them.
    """
    done = object()
    out: queue.Queue[Any] = queue.Queue(maxsize=max(2, max_buffered // max(1, batch_size)))
    stop = threading.Event()

    def run(source: Callable[[], Iterator[Any]]) -> None:
        batch: list[Any] = []
        try:
            for item in source():
                if stop.is_set():
                    return
                batch.append(item)
                if len(batch) >= batch_size:
                    out.put(batch)
                    batch = []
        except BaseException as err:
            out.put(batch)
            batch = []
            out.put(err)
        finally:
            if batch and not stop.is_set():
                out.put(batch)
            out.put(done)

    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="crm-fetch") as pool:
        for source in sources:
            pool.submit(run, source)
        yield from drain_batches(out, done, len(sources), stop)
