"""Pipedrive's answers: the envelope of a successful one, the typed exception of an error."""

from __future__ import annotations

from typing import Any

from airflow_provider_crm.common import errors as crm
from airflow_provider_crm.common import http, jsoncodec


def pipedrive_error(status: int, body: Any, what: str, not_json: str | None = None) -> crm.CrmApiError:
    """The typed exception for an error answer; keeps ``error`` and ``error_info``.

    :param not_json: what the body was instead of JSON (see :func:`http.not_json`), if it was not JSON.
    """
    body = body if isinstance(body, dict) else {}
    message = str(body.get("error") or f"HTTP {status}")
    if body.get("error_info"):
        message += f" ({body['error_info']})"
    if not_json:
        message += f"; {not_json}"
    message = f"{what}: {message}"
    code = body.get("code") or body.get("errorCode")
    code = str(code) if code is not None else None
    kwargs: dict[str, Any] = {"service": "pipedrive", "status": status, "code": code}
    if status == 429:
        return crm.CrmRateLimitError(message, **kwargs)
    if status >= 500 or status < 400:  # < 400: an answer that is no envelope (an HTML page, cut-short JSON)
        return crm.CrmTransientApiError(message, **kwargs)
    if status == 401:
        return crm.CrmAuthError(message, **kwargs)
    if status == 402 or (status == 403 and code and ("capping" in code or "limit" in code)):
        return crm.CrmPlanLimitError(message, **kwargs)
    if status == 403:
        return crm.CrmPermissionError(message, **kwargs)
    if status in (404, 410):
        return crm.CrmNotFoundError(message, **kwargs)
    if status in (400, 422):
        return crm.CrmValidationError(message, **kwargs)
    return crm.CrmPermanentApiError(message, **kwargs)


def envelope(status: int, content: bytes, content_type: str | None, what: str) -> dict[str, Any]:
    """The decoded envelope of a successful answer, else the typed error (with the answer's real
    status: an HTML page answered with HTTP 200 is reported as such, not as a 502)."""
    try:
        body = jsoncodec.loads(content)
    except ValueError:
        body = None
    if status >= 400 or not isinstance(body, dict) or body.get("success") is False:
        not_json = http.not_json(content, content_type) if not isinstance(body, dict) else None
        raise pipedrive_error(status, body, what, not_json)
    return body
