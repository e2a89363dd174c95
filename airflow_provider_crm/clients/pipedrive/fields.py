"""Custom fields both ways (hash key <-> name, option id <-> label) and how upsert keys are compared."""

from __future__ import annotations

from typing import Any

from airflow_provider_crm.clients.pipedrive.entities import CUSTOM_FIELDS_IN_V2, STANDARD_FIELDS
from airflow_provider_crm.common import jsoncodec
from airflow_provider_crm.common.errors import CrmInputError


class FieldMap:
    """Custom fields of one entity both ways: hash key <-> name, option id <-> label."""

    def __init__(self, entity: str, definitions: list[dict[str, Any]]) -> None:
        self.entity = entity
        self.definitions = definitions
        self.custom = [d for d in definitions if _is_custom(d)]
        self.by_key = {d["key"]: d for d in self.custom}
        self.by_name = {str(d["name"]).lower(): d for d in self.custom}
        self.standard_keys = {str(d.get("key")) for d in definitions if not _is_custom(d)}
        # decoding runs for every custom value of every exported record: look-ups, not scans
        self._names = {key: str(d["name"]) for key, d in self.by_key.items()}
        self._labels = {key: {o["id"]: o["label"] for o in d["options"]} for key, d in self.by_key.items()
                        if d.get("options")}
        self._sets = {key for key, d in self.by_key.items() if d.get("field_type") == "set"}

    def key_for(self, name: str) -> str:
        if name in self.by_key:
            return name
        found = self.by_name.get(name.lower())
        if found is None:
            import difflib

            close = difflib.get_close_matches(name.lower(), list(self.by_name), n=3)
            hint = f"; did you mean {', '.join(repr(self.by_name[c]['name']) for c in close)}?" if close else ""
            raise CrmInputError(
                f"{self.entity}: unknown field {name!r}: neither a standard field nor a custom field name{hint}"
            )
        return str(found["key"])

    def encode(self, key: str, value: Any) -> Any:
        """A value for writing, by field type: numbers from text, dates as ISO, option labels as ids."""
        definition = self.by_key[key]
        options = definition.get("options") or []
        if value is None:
            return None
        ftype = definition.get("field_type")
        where = f"{self.entity}: field {definition['name']!r} ({ftype})"
        if ftype in ("double", "int", "monetary"):
            amount = value.get("value") if isinstance(value, dict) else value
            try:
                number = float(str(amount).strip()) if not isinstance(amount, bool) else None
            except ValueError:
                number = None
            if number is None:
                raise CrmInputError(f"{where}: {amount!r} is not a number")
            if ftype == "monetary":
                currency = value.get("currency") if isinstance(value, dict) else None
                return {"value": number, "currency": currency or "USD"}
            return int(number) if ftype == "int" and number.is_integer() else number
        if ftype == "date":
            from datetime import date, datetime

            if isinstance(value, datetime):
                return value.date().isoformat()
            if isinstance(value, date):
                return value.isoformat()
            try:
                return date.fromisoformat(str(value)[:10]).isoformat()
            except ValueError:
                raise CrmInputError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None
        if ftype in ("varchar", "text", "varchar_auto", "phone", "address") and not isinstance(value, (dict, list)):
            return str(value)
        if not options:
            return value
        by_label = {str(o["label"]).lower(): o["id"] for o in options}
        ids = {o["id"] for o in options}

        def one(item: Any) -> Any:
            if item in ids:
                return item
            if str(item).lower() in by_label:
                return by_label[str(item).lower()]
            raise CrmInputError(
                f"{self.entity}: field {definition['name']!r}: {item!r} is not one of its options "
                f"{[o['label'] for o in options]}"
            )

        if isinstance(value, (list, tuple)):
            return [one(v) for v in value]
        return one(value)

    def decode(self, key: str, value: Any) -> Any:
        """A read value with option ids replaced by their labels (sets: a list of labels)."""
        options = self._labels.get(key)
        if not options or value is None:
            return value
        if isinstance(value, list):
            return [options.get(v, v) for v in value]
        if isinstance(value, str) and "," in value and key in self._sets:
            return [options.get(int(v) if v.isdigit() else v, v) for v in value.split(",")]
        return options.get(value, value)

    def rename_record(self, record: dict[str, Any], labels: bool = True) -> dict[str, Any]:
        """Custom fields under their names (v2 ``custom_fields`` or v1 top-level hash keys)."""
        out = dict(record)
        # values may be raw JSON text (exports read records shallowly): only fields with options are
        # decoded (to put labels in), the others are written back as they came
        raw = out.pop("custom_fields", None)
        values: dict[str, Any] = jsoncodec.shallow_object(raw) or {}
        if raw is None:
            top_level = self._names.keys() & out.keys()  # v1 answers put custom fields beside the standard ones
            if top_level:
                values = {**values, **{key: out.pop(key) for key in top_level}}
        names, labelled = self._names, self._labels if labels else {}
        for key, value in values.items():
            out[names.get(key, key)] = self.decode(key, jsoncodec.decoded(value)) if key in labelled else value
        return out


def _is_custom(definition: dict[str, Any]) -> bool:
    if "is_custom_field" in definition:
        return bool(definition["is_custom_field"])
    if "edit_flag" in definition:
        return bool(definition["edit_flag"])
    key = str(definition.get("key") or definition.get("field_code") or "")
    return len(key) == 40


def encode_record(entity: str, data: dict[str, Any], fmap: FieldMap | None) -> dict[str, Any]:
    """Data for a write: custom fields may be given by name and options by label (``fmap``: the
    entity's field map, None for an entity without custom fields)."""
    standard: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    for key, value in data.items():
        if key == "custom_fields" and isinstance(value, dict):
            for ckey, cvalue in value.items():
                assert fmap is not None
                real = fmap.key_for(ckey)
                custom[real] = fmap.encode(real, cvalue)
            continue
        if fmap and (key in fmap.by_key or key.lower() in fmap.by_name):
            real = fmap.key_for(key)
            custom[real] = fmap.encode(real, value)
        elif fmap and fmap.definitions and key not in STANDARD_FIELDS and key not in fmap.standard_keys:
            fmap.key_for(key)  # raises: names the unknown field and suggests close custom-field names
        else:
            standard[key] = value
    if custom:
        if entity in CUSTOM_FIELDS_IN_V2:
            standard["custom_fields"] = custom
        else:
            standard.update(custom)
    return standard


def normalise_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """v2 field definitions say field_code/field_name; v1 say key/name."""
    out = dict(definition)
    out.setdefault("key", definition.get("field_code"))
    out.setdefault("name", definition.get("field_name"))
    return out


def match_key(value: Any) -> str:
    """How key values are compared: trimmed, case-insensitive text."""
    return str(value).strip().lower()


_EMAIL_KEYS = frozenset({"email", "emails"})
_PHONE_KEYS = frozenset({"phone", "phones"})


def normalise_key(key_field: str, value: Any) -> Any:
    """An upsert key as Pipedrive keeps it, so that the lookup, the local index, the create's own
    lookup and the record written all agree: emails trimmed and lower-cased, phones and other text
    trimmed (inner spaces of a phone are kept: Pipedrive stores them as given). ``[{"value": ...}]``
    lists (``emails``, ``phones``) give their first value."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = value[0].get("value")
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if not isinstance(value, str):
        return value
    value = value.strip()
    return value.lower() if key_field.lower() in _EMAIL_KEYS else value


def key_of(data: dict[str, Any], key_field: str) -> Any:
    """The key's value in a record to write: ``data[key_field]``, or for ``email`` / ``phone`` the first
    of ``emails`` / ``phones`` (an upsert turns the one into the other), normalised."""
    value = data.get(key_field)
    if value in (None, "") and key_field.lower() in (_EMAIL_KEYS | _PHONE_KEYS):
        plural = "emails" if key_field.lower() in _EMAIL_KEYS else "phones"
        value = data.get(plural)
    return normalise_key(key_field, value) if value not in (None, "", []) else None


def record_keys(record: dict[str, Any], key: str, fmap: FieldMap) -> list[str]:
    """The values a record holds under ``key`` (a standard field, ``email``/``emails``, ``phones`` or a
    custom field by name), as :func:`match_key` compares them."""
    if key.lower() in fmap.by_name or key in fmap.by_key:
        real = fmap.key_for(key)
        current = (record.get("custom_fields") or {}).get(real, record.get(real))
    else:
        current = record.get({"email": "emails", "phone": "phones"}.get(key, key))
    if isinstance(current, dict) and "value" in current:
        current = current["value"]
    if isinstance(current, list):  # emails / phones: [{value, primary, label}]
        return [match_key(c.get("value") if isinstance(c, dict) else c) for c in current]
    return [] if current is None else [match_key(current)]


def matches(record: dict[str, Any], key: str, value: Any, fmap: FieldMap) -> bool:
    return match_key(value) in record_keys(record, key, fmap)
