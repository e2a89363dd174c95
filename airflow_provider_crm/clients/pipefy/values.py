"""Values in Pipefy's formats: Python values to the write format of a field type, read values to
machine values, field lookup by id or label, and card or record fields flattened for rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from airflow_provider_crm.common.errors import CrmInputError

_TEXT_TYPES = {"short_text", "long_text", "email", "phone", "select", "radio_vertical", "radio_horizontal", "cpf",
               "cnpj", "statement", "id"}
_LIST_TYPES = {"checklist_vertical", "checklist_horizontal", "assignee_select", "label_select", "connector",
               "attachment"}
# types whose read ``value`` is the text written: a findCards match on them is plain exact text
TEXT_TYPES = frozenset(_TEXT_TYPES)
_CHOICE_TYPES = {"select", "radio_vertical", "radio_horizontal"}

# How date fields are written (the connection's ``date_format``). No public source confirms ISO dates in
# fields_attributes; a real client writes dd/mm/yyyy in createCard (api-notes, "Checked against public
# evidence"), so that is the default. Date-times are written in ISO 8601 either way.
DATE_FORMATS = {"dd/mm/yyyy": "%d/%m/%Y", "yyyy-mm-dd": "%Y-%m-%d"}
DEFAULT_DATE_FORMAT = "dd/mm/yyyy"


def _name(field: dict[str, Any]) -> str:
    return f"field {field.get('label') or field.get('id')!r} ({field.get('type') or 'short_text'})"


def _number(field: dict[str, Any], value: Any, date_format: str) -> str:
    if isinstance(value, bool):
        raise CrmInputError(f"{_name(field)}: {value!r} is not a number")
    try:
        number = Decimal(str(value).strip())
    except Exception:
        raise CrmInputError(f"{_name(field)}: {value!r} is not a number") from None
    if not number.is_finite():
        raise CrmInputError(f"{_name(field)}: {value!r} is not a finite number")
    return format(number, "f")


def parse_date(value: Any) -> date | None:
    """A date from a date, a datetime, ``YYYY-MM-DD`` (or an ISO date-time) or ``dd/mm/yyyy``; else None."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    for parse in (date.fromisoformat, lambda t: datetime.strptime(t, "%d/%m/%Y").date(),
                  lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")).date()):
        try:
            return parse(text)
        except ValueError:
            continue
    return None


def _date(field: dict[str, Any], value: Any, date_format: str) -> str:
    day = parse_date(value)
    if day is None:
        raise CrmInputError(f"{_name(field)}: {value!r} is not a date (use YYYY-MM-DD or a date object)")
    return day.strftime(DATE_FORMATS.get(date_format, DATE_FORMATS[DEFAULT_DATE_FORMAT]))


def parse_moment(value: Any) -> datetime | None:
    """An aware date-time (naive ones are UTC) from a datetime, a date or ISO 8601 text; else None."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _datetime(field: dict[str, Any], value: Any, date_format: str) -> str:
    moment = parse_moment(value)
    if moment is None:
        raise CrmInputError(f"{_name(field)}: {value!r} is not a date-time (use ISO 8601)")
    return moment.isoformat()


def _time(field: dict[str, Any], value: Any, date_format: str) -> str:
    text = value.strftime("%H:%M") if isinstance(value, datetime) else str(value)
    if len(text) != 5 or text[2] != ":" or not (text[:2] + text[3:]).isdigit():
        raise CrmInputError(f"{_name(field)}: {value!r} is not a time (use HH:MM)")
    return text


def _text(field: dict[str, Any], value: Any, date_format: str) -> str:
    if field.get("type") in _CHOICE_TYPES and field.get("options"):
        options = [str(o) for o in field["options"]]
        if str(value) not in options:
            raise CrmInputError(f"{_name(field)}: {value!r} is not one of its options {options}")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_CONVERTERS: dict[str, Callable[[dict[str, Any], Any, str], str]] = {
    "number": _number, "currency": _number, "date": _date, "datetime": _datetime, "due_date": _datetime,
    "time": _time,
}


def to_pipefy_value(field: dict[str, Any], value: Any, date_format: str = DEFAULT_DATE_FORMAT) -> Any:
    """A Python value in the write format of a Pipefy field type.

    :param field: field metadata with ``id``, ``label``, ``type`` (and ``options`` for choices).
    :param value: str, int, float, Decimal, date, datetime, bool or a list (for list types).
    :param date_format: how date fields are written: ``dd/mm/yyyy`` or ``yyyy-mm-dd``.
    """
    if value is None:
        return None
    ftype = field.get("type") or "short_text"
    if ftype in _LIST_TYPES:
        items = value if isinstance(value, (list, tuple, set)) else [value]
        return [str(item) for item in items]
    if isinstance(value, (list, tuple, set, dict)):
        raise CrmInputError(f"{_name(field)}: cannot write a {type(value).__name__} ({value!r}); it takes a single value")
    return _CONVERTERS.get(ftype, _text)(field, value, date_format)


_MACHINE_KEYS = {"number": "float_value", "currency": "float_value", "date": "date_value",
                 "datetime": "datetime_value", "due_date": "datetime_value",
                 **dict.fromkeys(_LIST_TYPES, "array_value")}


def machine_value(item: dict[str, Any]) -> Any:
    """The machine-readable value of a card or record field as read (``array_value`` for lists,
    ``float_value`` for numbers, ``date_value`` / ``datetime_value`` for dates), else its text."""
    ftype = (item.get("field") or {}).get("type")
    key = _MACHINE_KEYS.get(str(ftype))
    if key is not None and item.get(key) is not None:
        return item[key]
    if ftype is None:  # type unknown: the first machine value present
        for key in ("array_value", "float_value", "date_value", "datetime_value"):
            if item.get(key) is not None:
                return item[key]
    return item.get("value")


def written_item(field: dict[str, Any], value: Any) -> dict[str, Any]:
    """A card field as a write of ``value`` (in write format) leaves it, shaped as a read one is: what an
    upsert's index keeps for a card it created or updated, so a later row compares against it."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list) else value
    item = {"field": {"id": field["id"], "label": field.get("label"), "type": field.get("type")}, "value": text}
    key = _MACHINE_KEYS.get(str(field.get("type")))
    if key is not None:
        item[key] = value
    return item


def same_value(field: dict[str, Any], have: Any, wanted: Any) -> bool:
    """Whether a field's current machine value equals a value in write format (to skip no-op updates)."""
    if wanted is None or have is None:
        return wanted is None and have in (None, "", [])
    ftype = field.get("type")
    if isinstance(wanted, list):
        return sorted(map(str, have if isinstance(have, list) else [have])) == sorted(map(str, wanted))
    if ftype in ("number", "currency"):
        try:
            return Decimal(str(have)) == Decimal(str(wanted))
        except ArithmeticError:
            return False
    if ftype == "date":  # read as ISO, written in the connection's date format
        day = parse_date(wanted)
        return day is not None and day == parse_date(have)
    if ftype in ("datetime", "due_date"):
        a, b = parse_moment(str(have)), parse_moment(str(wanted))
        return a is not None and a == b
    return str(have) == str(wanted)


def flatten_card_fields(card: dict[str, Any]) -> dict[str, Any]:
    """Card (or record) fields by label and by id holding the machine-readable value, plus
    ``<field id>__display`` holding the display text Pipefy shows."""
    out: dict[str, Any] = {}
    for item in card.get("fields") or card.get("record_fields") or []:
        field = item.get("field") or {}
        value = machine_value(item)
        for key in filter(None, (field.get("label") or item.get("name"), field.get("id"))):
            out[key] = value
        out[f"{field.get('id') or item.get('name')}__display"] = item.get("value")
    return out


def card_fields(card: dict[str, Any]) -> dict[str, Any]:
    """A card's fields by label and id, machine values only (what the phase sensor and trigger return)."""
    return {k: v for k, v in flatten_card_fields(card).items() if not k.endswith("__display")}


def resolve_field(fields: list[dict[str, Any]], key: str, where: str) -> dict[str, Any]:
    """A field by id or by label (case-insensitive); the error lists what exists."""
    for field in fields:
        if key in (field.get("id"), field.get("internal_id")):
            return field
    matches = [f for f in fields if str(f.get("label", "")).lower() == str(key).lower()]
    if len(matches) == 1:
        return matches[0]
    known = sorted({str(f.get("label")) for f in fields})
    if matches:
        raise CrmInputError(f"{where}: field label {key!r} is ambiguous; use its id ({[m['id'] for m in matches]})")
    raise CrmInputError(f"{where}: unknown field {key!r}; known fields: {', '.join(known)}")
