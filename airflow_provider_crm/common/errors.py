"""One exception hierarchy for both services.

Two families, so that Airflow does the right thing on its own:

- ``AirflowFailException`` subclasses (``CrmConfigError``, ``CrmInputError``, ``CrmApiError``'s
  permanent kinds, ``CrmQuotaExceededError``): a retry cannot fix them, the task fails at once.
- plain ``CrmRetryableError`` subclasses (5xx, timeouts, rate limits, waits too long to sit out):
  Airflow's task retry takes over.

Messages name the connection, field, row or id at fault, and never carry a secret.
"""

from __future__ import annotations

from typing import Any

try:  # the API clients (clients/) run without Airflow too; inside Airflow this base stops task retries
    from airflow.providers.common.compat.sdk import AirflowFailException
except ImportError:  # pragma: no cover - exercised by tests/unit/clients/test_without_airflow.py
    class AirflowFailException(Exception):  # type: ignore[no-redef]
        """Stands in for Airflow's exception where Airflow is not installed."""


class CrmError(Exception):
    """Base of every error this provider raises."""


class CrmConfigError(CrmError, AirflowFailException):
    """A connection is missing a field or has an invalid one."""

    def __init__(self, conn_id: str, field: str, problem: str) -> None:
        self.conn_id = conn_id
        self.field = field
        super().__init__(f"Connection {conn_id!r}: field {field!r} {problem}")


class CrmInputError(CrmError, AirflowFailException):
    """Operator input that no retry can fix: unknown field, wrong value type, bad row."""


class CrmApiError(CrmError):
    """An error answer from the service. Keeps the service's message and, where the service gives
    them, a correlation id (to quote to its support) and any partial data."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        status: int | None = None,
        code: str | None = None,
        correlation_id: str | None = None,
        data: Any = None,
        hint: str | None = None,
    ) -> None:
        self.service = service
        self.status = status
        self.code = code
        self.correlation_id = correlation_id
        self.data = data
        self.hint = hint
        self.api_message = message
        parts = [f"{service}: {message}"]
        if code:
            parts.append(f"code={code}")
        if status:
            parts.append(f"http={status}")
        if correlation_id:
            parts.append(f"correlation_id={correlation_id}")
        text = " ".join(parts)
        if hint:
            text += f". {hint}"
        super().__init__(text)


class CrmPermanentApiError(CrmApiError, AirflowFailException):
    """An API error that a retry cannot fix (4xx other than 429)."""


class CrmAuthError(CrmPermanentApiError):
    """Bad or expired credentials (HTTP 401 / UNAUTHORIZED)."""


class CrmPermissionError(CrmPermanentApiError):
    """The credentials may not do this (PERMISSION_DENIED, HTTP 403)."""


class CrmNotFoundError(CrmPermanentApiError):
    """The record does not exist (RESOURCE_NOT_FOUND, HTTP 404 / 410)."""


class CrmValidationError(CrmPermanentApiError):
    """The service refused the input (INVALID_INPUT, RECORD_INVALID, HTTP 400 / 422)."""


class CrmPlanLimitError(CrmPermanentApiError):
    """The account's plan does not allow this (HTTP 402/403 feature capping, plan-gated features)."""


class CrmRetryableError(CrmError):
    """Transient: Airflow's task retry (or our own in-process retry) may succeed."""


class CrmTransientApiError(CrmApiError, CrmRetryableError):
    """5xx, dropped connections, timeouts."""


class CrmInternalServerError(CrmTransientApiError):
    """A service's own internal error (a GraphQL ``INTERNAL_SERVER_ERROR``). The service asks clients
    not to repeat the same payload, and every repeat spends quota: retried once at most, never for a create."""


class CrmRateLimitError(CrmTransientApiError):
    """HTTP 429 or a rate-limit GraphQL error; ``retry_after`` in seconds when known."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class CrmWaitTooLongError(CrmRetryableError):
    """A rate-limit wait is longer than ``max_wait``: free the worker slot and let Airflow retry."""

    def __init__(self, reason: str, wait: float, max_wait: float) -> None:
        self.reason = reason
        self.wait = wait
        self.max_wait = max_wait
        super().__init__(
            f"Rate limit: would wait {wait:.0f}s ({reason}), longer than the {max_wait:.0f}s allowed in a task; "
            "raising so that Airflow's task retry takes over"
        )


class CrmQuotaExceededError(CrmError, AirflowFailException):
    """A call would exceed a quota that does not come back within the task (a monthly quota)."""


class CrmDailyBudgetExceededError(CrmRetryableError):
    """A daily budget or allowance (a token budget, a POST/PUT allowance) is spent; it comes back at the
    daily reset."""
