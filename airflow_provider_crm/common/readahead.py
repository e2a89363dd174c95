"""Cursor pagination one page ahead: the next request leaves while this page is being consumed.

A cursor API cannot be asked for page k+1 before page k's answer names it, so a plain loop pays
latency + decoding + the consumer's work per page. Here a reader thread fetches page k+1 as soon
as page k's cursor is known and the caller consumes page k meanwhile: per page only the latency
is paid. Still one request in flight per pagination; at most two pages wait in memory.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

Page = TypeVar("Page")


def read_ahead(fetch: Callable[[Any], Page], first: Any, following: Callable[[Any, Page], Any | None],
               name: str = "crm-page") -> Iterator[Page]:
    """Yield ``fetch(first)``, then ``fetch(following(first, page))`` ... until ``following`` says None.

    :param fetch: fetch one page from its request parameters (retries are its own business).
    :param first: the first page's parameters.
    :param following: the next page's parameters from this page's parameters and answer, or None.
    :param name: the reader thread's name.

    An error in ``fetch`` is raised here after the pages before it; closing the iterator early stops
    the reader once its request in flight has returned.
    """
    pages: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def reader(params: Any) -> None:
        try:
            while params is not None and not stop.is_set():
                page = fetch(params)
                params = following(params, page)
                pages.put(page)
        except BaseException as err:  # handed to the consumer, raised there
            pages.put(err)
        finally:
            pages.put(done)

    thread = threading.Thread(target=reader, args=(first,), name=name, daemon=True)
    thread.start()
    try:
        while (item := pages.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting to hand over a page
            with contextlib.suppress(queue.Empty):
                pages.get(timeout=0.05)
