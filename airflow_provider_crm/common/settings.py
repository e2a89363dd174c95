"""Reading connection fields: typed, validated, with errors that name the connection and field."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from airflow_provider_crm.common.connection_form import extra_value
from airflow_provider_crm.common.errors import CrmConfigError


def connection_extras(conn_id: str, conn: Any) -> dict[str, Any]:
    """A connection's extras as a dict; extras that are not a JSON object fail the task at once.

    Airflow's ``extra_dejson`` logs an error and answers ``{}`` for extras that are not JSON, and the
    hook would then run on defaults (file store, Lite plan, ...). The message names the connection, the
    field and where the JSON breaks, never the text (extras hold secrets).
    """
    raw = getattr(conn, "extra", None)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except ValueError as err:
        where = f": {err.msg} at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise CrmConfigError(conn_id, "extra", f"is not valid JSON{where}; fix it in the connection "
                                               "(Admin > Connections, or the secrets backend)") from None
    if not isinstance(value, dict):
        raise CrmConfigError(conn_id, "extra", f"must be a JSON object of fields, got a JSON {type(value).__name__}")
    return value


class ConnectionReader:
    """Typed access to one connection's extras.

    :param conn_id: the connection id, named in every error.
    :param conn_type: the connection type (for the ``extra__<type>__`` prefixed form).
    :param extras: the connection's ``extra_dejson``.
    """

    def __init__(self, conn_id: str, conn_type: str, extras: dict[str, Any]) -> None:
        self.conn_id = conn_id
        self.conn_type = conn_type
        self.extras = extras or {}

    @classmethod
    def for_connection(cls, conn_id: str, conn_type: str, conn: Any) -> ConnectionReader:
        """A reader of ``conn``'s extras (see :func:`connection_extras`)."""
        return cls(conn_id, conn_type, connection_extras(conn_id, conn))

    def text(self, name: str) -> str | None:
        value = extra_value(self.extras, self.conn_type, name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise CrmConfigError(self.conn_id, name, f"must be text, got {type(value).__name__}")
        return value.strip() or None

    def positive_int(self, name: str) -> int | None:
        value = extra_value(self.extras, self.conn_type, name)
        if value is None:
            return None
        try:
            number = int(str(value).strip())
        except ValueError:
            raise CrmConfigError(self.conn_id, name, f"must be a whole number, got {value!r}") from None
        if number <= 0:
            raise CrmConfigError(self.conn_id, name, f"must be greater than 0, got {number}")
        return number

    def choice(self, name: str, choices: list[str] | tuple[str, ...], default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        value = value.lower()
        if value not in choices:
            raise CrmConfigError(self.conn_id, name, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def url(self, name: str, value: str | None, default: str) -> str:
        """Validate an http(s) URL given in the form field ``name``."""
        value = (value or "").strip() or default
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            shown = value.rsplit("@", 1)[-1]  # never show credentials embedded in a URL
            raise CrmConfigError(self.conn_id, name, f"must be an http(s) URL, got {shown!r}")
        return value.rstrip("/")

    def store(self) -> str | None:
        value = self.text("rate_limit_store")
        if value is None:
            return None
        if value not in ("memory", "file") and not value.startswith(("file://", "redis://", "rediss://", "unix://")):
            # name only the scheme: a store URL may carry a password
            raise CrmConfigError(
                self.conn_id, "rate_limit_store",
                f"must be 'file', 'memory', file:///dir or redis://..., got a {value.split(':', 1)[0]!r} value",
            )
        return value
