"""Pipefy's answers read into data or typed errors: ``errors[]`` (HTTP 200 with partial data), the
singular top-level ``error`` shapes, HTTP statuses, token-endpoint answers."""

from __future__ import annotations

from typing import Any

from airflow_provider_crm.common import errors as crm
from airflow_provider_crm.common import http, jsoncodec

PERMISSION_HINT = "A service account must be added as a member of each pipe or table it reads or writes"

_HTTP_ERROR_CLASSES: dict[int, type[crm.CrmApiError]] = {
    403: crm.CrmPermissionError,
    404: crm.CrmNotFoundError,
    410: crm.CrmNotFoundError,
    422: crm.CrmValidationError,
}

_ERROR_CLASSES: dict[str, type[crm.CrmApiError]] = {
    "UNAUTHORIZED": crm.CrmAuthError,
    "PERMISSION_DENIED": crm.CrmPermissionError,
    "INVALID_ROLE": crm.CrmPermissionError,
    "RESOURCE_NOT_FOUND": crm.CrmNotFoundError,
    "RECORD_NOT_FOUND": crm.CrmNotFoundError,
    "INVALID_INPUT": crm.CrmValidationError,
    "RECORD_INVALID": crm.CrmValidationError,
    "FEATURE_NOT_ALLOWED_BY_ORGANIZATION_PLAN": crm.CrmPlanLimitError,
    "INTERNAL_SERVER_ERROR": crm.CrmInternalServerError,
}


def singular_error(error: Any) -> dict[str, Any]:
    """A top-level ``error`` answer as one entry of a GraphQL ``errors`` list.

    Pipefy's shapes (api-notes, "Checked against public evidence"): ``{"error": "invalid_token"}`` and
    ``{"error": {"message", "details": {"code", "correlation_id"}}}``, sometimes with HTTP 200."""
    if isinstance(error, dict):
        details: dict[str, Any] = error["details"] if isinstance(error.get("details"), dict) else {}
        return {"message": str(error.get("message") or details.get("code") or "error"),
                "extensions": {"code": details.get("code") or error.get("code"),
                               "correlation_id": details.get("correlation_id")}}
    text = str(error)
    return {"message": text, "extensions": {"code": "UNAUTHORIZED" if "token" in text.lower() else text.upper()}}


def pipefy_error(errors: list[dict[str, Any]], data: Any = None, status: int | None = None) -> crm.CrmError:
    """The typed exception for a GraphQL ``errors`` list (first error decides the type)."""
    first = errors[0] if errors else {}
    message = "; ".join(str(e.get("message", "")) for e in errors) or "unknown error"
    extensions = first.get("extensions") or {}
    code = extensions.get("code") or first.get("type") or first.get("code")
    code = str(code) if code is not None else None
    correlation_id = extensions.get("correlation_id")
    upper = (code or "").upper()
    if upper == "USAGE_LIMIT_EXCEEDED":  # Pipefy's e-mail sending limit, not the monthly API quota
        return crm.CrmPlanLimitError(message, service="pipefy", status=status, code=code, correlation_id=correlation_id,
                                 data=data, hint="Pipefy's limit on e-mails sent from the account was reached")
    if "RATE" in upper or "TOO_MANY" in upper or "too many requests" in message.lower():
        return crm.CrmRateLimitError(message, service="pipefy", status=status, code=code, correlation_id=correlation_id,
                                 data=data)
    cls = _ERROR_CLASSES.get(upper)
    if cls is None:
        cls = {"ResourceNotFoundError": crm.CrmNotFoundError}.get(str(first.get("type")), crm.CrmPermanentApiError)
    hint = PERMISSION_HINT if cls is crm.CrmPermissionError else None
    return cls(message, service="pipefy", status=status, code=code, correlation_id=correlation_id, data=data,
               hint=hint)


def named_error(err: crm.CrmApiError, what: str) -> crm.CrmApiError:
    """The same error, its message prefixed with what was being done (``card 123``, ``pipe 301``):
    the service's own message, code and correlation id stay, ``api_message`` stays the service's."""
    if what and str(err.api_message).startswith(what):
        return err
    hint = PERMISSION_HINT if isinstance(err, crm.CrmPermissionError) else getattr(err, "hint", None)
    new = type(err).__new__(type(err))
    crm.CrmApiError.__init__(new, f"{what}: {err.api_message}", service=err.service, status=err.status, code=err.code,
                         correlation_id=err.correlation_id, data=err.data, hint=hint)
    new.__dict__.update({k: v for k, v in err.__dict__.items() if k not in new.__dict__})
    new.api_message = err.api_message
    return new


def read_answer(status: int, content: bytes, content_type: str | None, conn_id: str) -> dict[str, Any]:
    """The ``data`` of a GraphQL answer, or the typed error it holds (``conn_id`` is named when the
    credentials are refused)."""
    try:
        payload = jsoncodec.loads(content)
    except ValueError:
        payload = None
    if status == 429:
        raise crm.CrmRateLimitError("rate limit exceeded (HTTP 429)", service="pipefy", status=status)
    if status == 401:
        raise crm.CrmAuthError(f"token refused for connection {conn_id!r}", service="pipefy", status=status)
    if status >= 500:
        raise crm.CrmTransientApiError(f"server error {status}", service="pipefy", status=status)
    if not isinstance(payload, dict):
        # an HTML page (a proxy's or a maintenance page) or JSON cut short: the real status, retryable
        raise crm.CrmTransientApiError(f"{http.not_json(content, content_type)} (HTTP {status})", service="pipefy",
                                   status=status)
    if "error" in payload and not payload.get("errors") and not payload.get("data"):
        payload = {"errors": [singular_error(payload["error"])]}
    if payload.get("errors"):
        error = pipefy_error(payload["errors"], payload.get("data"), status)
        if isinstance(error, crm.CrmAuthError):  # say which connection holds the refused credentials
            error = crm.CrmAuthError(error.api_message, service="pipefy", status=status, code=error.code,
                                 correlation_id=error.correlation_id,
                                 hint=f"Connection {conn_id!r}: check its token or service account")
        raise error
    if status >= 400:
        cls = _HTTP_ERROR_CLASSES.get(status, crm.CrmPermanentApiError)
        raise cls(f"HTTP {status}", service="pipefy", status=status)
    return payload.get("data") or {}


def token_answer(status: int, body: Any, content: bytes, content_type: str | None, conn_id: str) -> dict[str, Any]:
    """A token endpoint's JSON answer (``body``: its parsed JSON or None); a page that is not JSON is a
    retryable error with its real status, a refusal names the connection."""
    if status >= 500:
        raise crm.CrmTransientApiError("token endpoint error", service="pipefy", status=status)
    if status != 200:
        raise crm.CrmAuthError(f"service account token refused for connection {conn_id!r} (check client_id and "
                           "client_secret)", service="pipefy", status=status)
    if not isinstance(body, dict) or not body.get("access_token"):
        problem = "the answer holds no access_token" if isinstance(body, dict) else http.not_json(content, content_type)
        raise crm.CrmTransientApiError(f"token endpoint: {problem}", service="pipefy", status=status)
    return body
