"""Streaming, atomic writers for exports (JSON Lines and CSV) to any ``ObjectStoragePath``.

Records are written one at a time to a temporary object next to the target and moved into place
only when the writer closes without an error, so a reader never sees half a file and a failed run
leaves the previous file untouched. Memory stays flat whatever the record count.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import IO, Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_crm.common.errors import CrmInputError

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")


def as_path(path: ObjectStoragePath | str) -> ObjectStoragePath:
    return path if isinstance(path, ObjectStoragePath) else ObjectStoragePath(str(path))


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _csv_cell(value: Any) -> Any:
    """CSV holds text: nested values are written as JSON so nothing is lost."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


class ExportWriter:
    """Writes records to an open text stream. Use :func:`open_export_writer`."""

    def __init__(self, stream: IO[str], fmt: str, fieldnames: Sequence[str] | None) -> None:
        self.stream = stream
        self.fmt = fmt
        self.count = 0
        # object-store streams are proxies: one write per ~256 KB instead of one per record
        self._pending: list[str] = []
        self._pending_size = 0
        self._fieldnames = list(fieldnames) if fieldnames else None
        self._csv: csv.DictWriter | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            line = json.dumps(record, default=_json_default, ensure_ascii=False) + "\n"
            self._pending.append(line)
            self._pending_size += len(line)
            if self._pending_size > 262_144:
                self.flush()
        else:
            if self._csv is None:
                # Without declared columns, the first record fixes them; later unknown keys are an
                # error rather than silently dropped data.
                self._csv = csv.DictWriter(self.stream, fieldnames=self._fieldnames or list(record))
                self._csv.writeheader()
            try:
                self._csv.writerow({k: _csv_cell(v) for k, v in record.items()})
            except ValueError as err:
                raise CrmInputError(
                    f"CSV export: record {self.count + 1} has columns not declared in the header ({err}); "
                    "pass fieldnames= or export JSON Lines"
                ) from err
        self.count += 1

    def flush(self) -> None:
        if self._pending:
            self.stream.write("".join(self._pending))
            self._pending.clear()
            self._pending_size = 0

    def write_many(self, records: Iterator[dict[str, Any]]) -> int:
        for record in records:
            self.write(record)
        return self.count


@contextmanager
def open_export_writer(
    path: ObjectStoragePath | str, fmt: str = "jsonl", fieldnames: Sequence[str] | None = None
) -> Iterator[ExportWriter]:
    """Stream records to ``path`` atomically.

    :param path: target file (local path or any ObjectStoragePath URL: file://, s3://, gs://, ...).
    :param fmt: ``jsonl`` or ``csv``.
    :param fieldnames: CSV columns; by default the keys of the first record.
    """
    if fmt not in FORMATS:
        raise CrmInputError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    target = as_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    with tmp.open("wb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8", newline="" if fmt == "csv" else None)
        writer = ExportWriter(stream, fmt, fieldnames)
        try:
            yield writer
            writer.flush()
            stream.flush()
        except BaseException:
            stream.flush()
            stream.detach()
            tmp.unlink(missing_ok=True)
            raise
        stream.detach()
    tmp.replace(target) if target.protocol in ("", "file", "local") else tmp.move(str(target))
    log.info("Wrote %d records to %s", writer.count, target)


def merge_parallel(sources: Sequence[Callable[[], Iterator[Any]]], max_workers: int,
                   max_buffered: int = 1000) -> Iterator[Any]:
    """Run each source (a phase, a time slice) in a thread and yield their items as they come.

    The buffer between the fetching threads and the writer is bounded, so memory stays flat whatever
    the record count; the first error in any source is raised here; closing the iterator stops them.
    """
    done = object()
    out: queue.Queue[Any] = queue.Queue(maxsize=max_buffered)
    stop = threading.Event()

    def run(source: Callable[[], Iterator[Any]]) -> None:
        try:
            for item in source():
                if stop.is_set():
                    return
                out.put(item)
        except BaseException as err:
            out.put(err)
        finally:
            out.put(done)

    with ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="crm-fetch") as pool:
        for source in sources:
            pool.submit(run, source)
        remaining = len(sources)
        try:
            while remaining:
                item = out.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            while remaining:  # let blocked producers finish so the pool can shut down
                try:
                    if out.get(timeout=0.1) is done:
                        remaining -= 1
                except queue.Empty:
                    continue
