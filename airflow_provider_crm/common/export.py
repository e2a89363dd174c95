"""Streaming, atomic writers for exports (JSON Lines and CSV) to any ``ObjectStoragePath``.

Records are written one at a time to a temporary object next to the target and moved into place
only when the writer closes without an error, so a reader never sees half a file and a failed run
leaves the previous file untouched. Memory stays flat whatever the record count.
"""

from __future__ import annotations

import csv
import functools
import gc
import io
import logging
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import IO, Any, TypeVar, cast

from airflow.sdk import ObjectStoragePath

from airflow_provider_crm.common import jsoncodec
from airflow_provider_crm.common.errors import CrmInputError

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")


def as_path(path: ObjectStoragePath | str) -> ObjectStoragePath:
    return path if isinstance(path, ObjectStoragePath) else ObjectStoragePath(str(path))


def _csv_cell(value: Any) -> Any:
    """CSV holds text: nested values are written as JSON so nothing is lost."""
    value = jsoncodec.decoded(value)  # a value an export passed through undecoded
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return jsoncodec.dumps(value).decode()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


class ExportWriter:
    """Writes records to an open binary stream. Use :func:`open_export_writer`.

    CSV needs its header before the first row, but records of one entity do not all have the same
    keys (tombstones add ``_deleted``, some records lack optional fields). Unless ``fieldnames`` fixes
    the columns, CSV rows are therefore spooled to a local temporary file as JSON lines and written
    out at the end under a header of ``columns`` followed by every other key seen, in order of first
    appearance: the header is stable across runs and nothing is dropped, with memory still flat.
    """

    def __init__(self, raw: IO[bytes], fmt: str, fieldnames: Sequence[str] | None = None,
                 columns: Sequence[str] | None = None) -> None:
        self.raw = raw
        self.fmt = fmt
        self.count = 0
        # object-store streams are proxies: one write per ~256 KB instead of one per record; each
        # pending block is one or more whole lines, newlines included
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._fieldnames = list(fieldnames) if fieldnames else None
        self._columns: dict[str, None] = dict.fromkeys(columns or ())
        self._dropped: set[str] = set()
        self._spool: IO[bytes] | None = None
        if fmt == "csv" and self._fieldnames is None:
            # closed by close() or discard(): the writer outlives any one block
            self._spool = tempfile.TemporaryFile(prefix="crm-export-", suffix=".jsonl")  # noqa: SIM115
        self._text: io.TextIOWrapper | None = None
        self._csv: csv.DictWriter | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl" or self._spool is not None:
            if self._spool is not None:
                for key in record.keys() - self._columns.keys():
                    self._columns[key] = None
            line = jsoncodec.dumps(record) + b"\n"
            self._pending.append(line)
            self._pending_size += len(line)
            if self._pending_size > 262_144:
                self._flush_lines()
        else:
            self._csv_row(record)
        self.count += 1

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """:meth:`write` each of ``records``; JSON Lines in one step."""
        if self.fmt != "jsonl" or self._spool is not None:
            for record in records:
                self.write(record)
            return
        self.write_lines(jsoncodec.dumps_lines(records), len(records))  # one call, no Python step per record

    def write_lines(self, block: bytes, count: int) -> None:
        """Add ``count`` records already encoded as JSON Lines (``block`` ends with a newline); JSON Lines only."""
        if self.fmt != "jsonl" or self._spool is not None:
            raise ValueError("write_lines takes JSON Lines; a CSV export writes records")
        if not block:
            return
        self._pending.append(block)
        self._pending_size += len(block)
        self.count += count
        if self._pending_size > 262_144:
            self._flush_lines()

    def _start_csv(self) -> csv.DictWriter:
        if self._csv is None:
            self._text = io.TextIOWrapper(self.raw, encoding="utf-8", newline="")
            header = self._fieldnames or list(self._columns)
            self._csv = csv.DictWriter(self._text, fieldnames=header, extrasaction="ignore")
            self._csv.writeheader()
        return self._csv

    def _csv_row(self, record: dict[str, Any]) -> None:
        writer = self._start_csv()
        if self._fieldnames is not None:
            self._dropped.update(record.keys() - set(self._fieldnames))
        writer.writerow({k: _csv_cell(v) for k, v in record.items()})

    def _flush_lines(self) -> None:
        if self._pending:
            (self._spool or self.raw).write(b"".join(self._pending))
            self._pending.clear()
            self._pending_size = 0

    def flush(self) -> None:
        self._flush_lines()
        if self._text is not None:
            self._text.flush()

    def close(self) -> None:
        """Write out what is spooled, flush, and let go of the stream without closing it (the caller
        owns it)."""
        self._flush_lines()
        if self._spool is not None:
            spool, self._spool = self._spool, None
            with spool:
                spool.seek(0)
                for line in spool:
                    self._csv_row(jsoncodec.loads(line))
            self._start_csv()  # the header, even without records
        if self._dropped:
            log.warning("CSV export: columns not in fieldnames were left out: %s", ", ".join(sorted(self._dropped)))
            self._dropped.clear()
        self.flush()
        if self._text is not None:
            self._text.detach()
            self._text = None

    def discard(self) -> None:
        """Let go of what is spooled without writing it (the export failed)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None


# A partial file of the same export untouched for this long belongs to an attempt that died (a
# running export writes every few hundred kilobytes).
STALE_PARTIAL_S = 600


def _partial_prefix(owner: str | None, target: ObjectStoragePath) -> str:
    return f".{owner}." if owner else f".{target.name}."


def remove_stale_partials(target: ObjectStoragePath, owner: str | None) -> list[str]:
    """Delete the temporary files that earlier attempts of the same export left beside ``target``
    when they were killed: always those for the same target (a retry replaces them), and the
    owner's others once untouched for :data:`STALE_PARTIAL_S`. Returns the names removed."""
    prefix = _partial_prefix(owner, target)
    removed: list[str] = []
    try:
        siblings = list(target.parent.iterdir())
    except (FileNotFoundError, NotImplementedError):
        return removed
    for sibling in siblings:
        name = sibling.name
        if not (name.startswith(prefix) and name.endswith(".partial")):
            continue
        same_target = name.startswith(f"{prefix}{target.name}.") if owner else True
        try:
            if not same_target and time.time() - float(sibling.stat().st_mtime or 0) < STALE_PARTIAL_S:
                continue  # perhaps another run of this export, still writing
            sibling.unlink(missing_ok=True)
            removed.append(name)
        except (FileNotFoundError, TypeError, ValueError):
            continue
    if removed:
        log.info("Removed %d partial file(s) that earlier killed attempts left in %s: %s", len(removed),
                 target.parent, ", ".join(removed))
    return removed


@contextmanager
def open_export_writer(
    path: ObjectStoragePath | str, fmt: str = "jsonl", fieldnames: Sequence[str] | None = None,
    owner: str | None = None, columns: Sequence[str] | None = None,
) -> Iterator[ExportWriter]:
    """Stream records to ``path`` atomically.

    :param path: target file (local path or any ObjectStoragePath URL: file://, s3://, gs://, ...).
    :param fmt: ``jsonl`` or ``csv``.
    :param fieldnames: CSV: exactly these columns (other keys are left out, with a warning).
    :param columns: CSV without ``fieldnames``: the columns the header starts with (the entity's
        declared fields), followed by any other key a record has.
    :param owner: a name for the export (e.g. ``dag_id.task_id``) put in its temporary file's name, so
        the next attempt can find and remove what a killed one left, whatever its target was.
    """
    if fmt not in FORMATS:
        raise CrmInputError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    target = as_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    owner = re.sub(r"[^A-Za-z0-9_.-]", "_", owner) if owner else None
    remove_stale_partials(target, owner)
    tmp = target.parent / f"{_partial_prefix(owner, target)}{target.name + '.' if owner else ''}{uuid.uuid4().hex[:8]}.partial"
    with tmp.open("wb") as raw:
        writer = ExportWriter(raw, fmt, fieldnames, columns)
        try:
            yield writer
            writer.close()
        except BaseException:
            writer.discard()
            writer.close()
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(target) if target.protocol in ("", "file", "local") else tmp.move(str(target))
    log.debug("Wrote %d records to %s", writer.count, target)


# How long a thread may hold the interpreter while another waits for it (CPython's default: 5 ms).
# An export has reader threads that only need it for a moment, to send the next request, beside
# threads decoding and writing records for long stretches; at 5 ms a request left 3-5 ms late
# (measured between our send and the server's arrival), at 0.5 ms within 1 ms.
EXPORT_SWITCH_INTERVAL_S = 0.0005

Execute = TypeVar("Execute", bound=Callable[..., Any])


def tuned_for_export(execute: Execute) -> Execute:
    """Decorate an export operator's ``execute``: the task process is set up for many threads.

    - Every object alive at the start (Airflow, the providers, the DAG) is frozen out of the
      collector's reach: an export allocates millions of short-lived dicts, which trigger full
      collections, and each walked the whole task process, pauses of 50-100 ms that stalled every
      fetching thread (an 8 % slower 200,000-deal export). Objects created later are collected as
      usual, and the task process ends with the task.
    - The interpreter's switch interval is :data:`EXPORT_SWITCH_INTERVAL_S` while ``execute`` runs.
    """

    @functools.wraps(execute)
    def tuned(*args: Any, **kwargs: Any) -> Any:
        gc.freeze()
        previous = sys.getswitchinterval()
        sys.setswitchinterval(EXPORT_SWITCH_INTERVAL_S)
        try:
            return execute(*args, **kwargs)
        finally:
            sys.setswitchinterval(previous)

    return cast(Execute, tuned)
