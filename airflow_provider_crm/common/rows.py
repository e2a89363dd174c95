"""Rows for bulk writes: a list of dicts, an XCom value, or a JSON Lines / JSON / CSV file."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_crm.common.errors import CrmInputError


def read_rows(source: Any) -> Iterator[dict[str, Any]]:
    """Yield rows as dicts, streaming files.

    :param source: a list (or other iterable) of dicts, a JSON string of such a list (as a templated
        XCom renders), an ``ObjectStoragePath``, or a path/URL string ending in ``.jsonl``, ``.ndjson``,
        ``.json`` or ``.csv``.
    """
    if isinstance(source, ObjectStoragePath):
        yield from _read_file(source)
        return
    if isinstance(source, str):
        text = source.strip()
        if text.startswith("["):
            yield from _check_dicts(json.loads(text), "the JSON list")
            return
        yield from _read_file(ObjectStoragePath(text))
        return
    if isinstance(source, dict):
        raise CrmInputError("rows must be a list of dicts or a file, not a single dict")
    if isinstance(source, Iterable):
        yield from _check_dicts(source, "the rows")
        return
    raise CrmInputError(f"rows: cannot read rows from a {type(source).__name__}")


def _check_dicts(rows: Iterable[Any], where: str) -> Iterator[dict[str, Any]]:
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise CrmInputError(f"row {index} of {where} is a {type(row).__name__}, not an object")
        yield row


def _read_file(path: ObjectStoragePath) -> Iterator[dict[str, Any]]:
    if not path.exists():
        raise CrmInputError(f"rows file {path} does not exist")
    suffix = path.suffix.lower()
    with path.open("rb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        if suffix in (".jsonl", ".ndjson"):
            for line_no, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CrmInputError(f"{path} line {line_no}: not valid JSON ({err.msg})") from err
                if not isinstance(row, dict):
                    raise CrmInputError(f"{path} line {line_no}: expected an object")
                yield row
        elif suffix == ".json":
            yield from _check_dicts(json.load(stream), str(path))
        elif suffix == ".csv":
            for row in csv.DictReader(stream):
                # empty cells mean "no value", not an empty string to write
                yield {k: (v if v != "" else None) for k, v in row.items() if k is not None}
        else:
            raise CrmInputError(f"rows file {path}: unknown format {suffix!r} (use .jsonl, .json or .csv)")
        stream.detach()


def counted_rows(source: Any) -> tuple[Iterator[dict[str, Any]], int]:
    """The rows of ``source`` (as :func:`read_rows`) and how many there are; a file is counted in a first
    streamed pass rather than held in memory."""
    if isinstance(source, ObjectStoragePath) or (isinstance(source, str) and not source.strip().startswith("[")):
        return read_rows(source), sum(1 for _ in read_rows(source))
    rows = list(read_rows(source))
    return iter(rows), len(rows)
