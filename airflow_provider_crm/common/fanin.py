"""The consuming side of several producer threads that put record batches on one bounded queue."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any


def drain_batches(out: queue.Queue[Any], done: object, producers: int, stop: threading.Event) -> Iterator[Any]:
    """Yield the items of every batch put on ``out`` until each of ``producers`` has put ``done``.

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
            else:
                yield from item
    finally:
        stop.set()
        while remaining:
            try:
                if out.get(timeout=0.1) is done:
                    remaining -= 1
            except queue.Empty:
                continue
