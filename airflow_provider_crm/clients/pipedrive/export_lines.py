"""An export's pages turned into JSON Lines, in worker processes when the machine has cores to spare.

Decoding a page, putting custom fields under their names and encoding the lines is most of an
export's CPU (about 8 ms of 500 deals' 20 ms), and in one process it runs under the interpreter lock
with the threads that fetch the pages. At Ultimate's 60 pages a second that is one busy core: the
export was CPU-bound before it was rate-bound. A page is a pure function of its JSON text and the
field map, so it goes to a worker process as bytes and comes back as bytes.

Worker processes are forked before the export's own threads start, and run nothing but
:func:`encode_page`: no logging, no imports, no lock a thread of the parent could have held at the
fork (which is why Python 3.12's warning about forking a threaded process is silenced there; an
Airflow task process, or a test's, may have threads of its own). Where a process may not have
children (a Celery prefork worker's task runs in a daemonic process), none can start, or the machine
has one core, pages are encoded in the calling thread.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from airflow_provider_crm.clients.pipedrive.exports import SHALLOW_KEYS, mark_page
from airflow_provider_crm.clients.pipedrive.fields import FieldMap
from airflow_provider_crm.common import jsoncodec
from airflow_provider_crm.common.rawpage import RawPage

log = logging.getLogger(__name__)

# what one page gives the writer: its JSON Lines, how many records, and how many of each kind
Lines = tuple[bytes, int, dict[str, int]]


def encode_page(page: RawPage | list[dict[str, Any]], fmap: FieldMap | None, labels: bool,
                archived_too: bool) -> Lines:
    """A page's records as JSON Lines, each as :func:`~.exports.mark` writes it."""
    records = page.records(SHALLOW_KEYS) if isinstance(page, RawPage) else page
    marked, counts = mark_page(records, fmap, labels=labels, archived_too=archived_too)
    return jsoncodec.dumps_lines(marked), len(marked), counts


def spare_processes(limit: int = 2) -> int:
    """Worker processes this task can use: the cores but one (the fetching threads'), at most
    ``limit``; 0 with one core or where this process may not have children."""
    if multiprocessing.current_process().daemon:
        return 0  # a Celery prefork task: daemonic processes may not have children
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(limit, cores - 1))


class PageEncoder:
    """Encodes pages in order, in ``processes`` forked workers (0: in the calling thread).

    Use as a context manager, entered before any thread of the export starts::

        with PageEncoder(processes, labels=True, archived_too=False) as encoder:
            for block, written, counts in encoder.lines(pages, reader.field_map):
                writer.write_lines(block, written)

    At most ``2 x processes + 2`` pages are on their way at once, so memory stays flat.

    :param processes: worker processes (see :func:`spare_processes`).
    :param labels: option ids as labels.
    :param archived_too: mark archived records.
    """

    def __init__(self, processes: int, *, labels: bool, archived_too: bool) -> None:
        self.processes = processes
        self.labels = labels
        self.archived_too = archived_too
        self._pool: ProcessPoolExecutor | None = None
        self._pending: collections.deque[Future[Lines]] = collections.deque()

    def __enter__(self) -> PageEncoder:
        if self.processes > 0:
            pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("fork"))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    # the fork start method launches every worker at the first submit: now, before the
                    # export's readers start
                    pool.submit(int).result()
            except (AssertionError, OSError, BrokenProcessPool) as err:
                pool.shutdown(wait=False, cancel_futures=True)
                log.warning("Encoding export pages in this process: no worker process could start (%s: %s)",
                            type(err).__name__, err)
                self.processes = 0
            else:
                self._pool = pool
                log.info("Encoding export pages in %d worker process(es)", self.processes)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def submit(self, page: RawPage | list[dict[str, Any]], fmap: FieldMap | None) -> Iterator[Lines]:
        """Hand over a page; yields the pages encoded by now, in the order they were handed over."""
        if self._pool is None or not isinstance(page, RawPage):
            # lists of records are pages of offset-paged entities: small, and decoded already
            yield from self.finish()
            yield encode_page(page, fmap, self.labels, self.archived_too)
            return
        self._pending.append(self._pool.submit(encode_page, page, fmap, self.labels, self.archived_too))
        while self._pending and (self._pending[0].done() or len(self._pending) > 2 * self.processes + 2):
            yield self._pending.popleft().result()

    def lines(self, pages: Iterable[RawPage | list[dict[str, Any]]], field_map: Callable[[], FieldMap | None]
              ) -> Iterator[Lines]:
        """Every page's lines, in order: :meth:`submit` each (with the field map as it is when the page
        is handed over), then :meth:`finish`."""
        for page in pages:
            yield from self.submit(page, field_map())
        yield from self.finish()

    def finish(self) -> Iterator[Lines]:
        """The pages still on their way, in order."""
        while self._pending:
            yield self._pending.popleft().result()
