"""The requests session the hooks share between their threads, and how both hooks send a request and
read its answer: every transport failure becomes a retryable ``CrmTransientApiError``."""

from __future__ import annotations

import http.client
from typing import Any

import httpx
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from airflow_provider_crm.common.errors import CrmRateLimitError, CrmTransientApiError

# Connections a session keeps per host: each reader thread (one per slice or phase) holds one, and
# urllib3's default of 10 would drop and reopen connections beyond that.
POOL_SIZE = 32


class HeaderCredentials(AuthBase):
    """Credentials travel in the headers each hook sets from its Airflow connection; this adds none.

    A session with no auth of its own looks in ``~/.netrc`` before every request: an entry there for
    the API's host would replace the hook's ``Authorization`` header, and the look-up's file-system
    calls release the interpreter lock, so a reader thread about to send its next request waited for
    the thread decoding the previous page (measured: requests left 1.8 ms later, 2 % of an export).
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def pooled_session(user_agent: str = "airflow-provider-crm") -> requests.Session:
    """A requests session sized for parallel readers (see ``POOL_SIZE``) that never reads ``~/.netrc``.

    Proxies still come from the environment (``HTTPS_PROXY``, ``NO_PROXY``), as with any requests session.
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"User-Agent": user_agent})
    session.auth = HeaderCredentials()
    return session


# -- transport failures -------------------------------------------------------------------------------
# Everything that can go wrong between sending a request and holding its whole body: no connection,
# resets, timeouts, a body cut short (requests' ChunkedEncodingError, urllib3's IncompleteRead), an
# undecodable compressed body. urllib3's and http.client's own errors are listed too, in case one
# escapes requests' wrapping.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError,
)


def failure_text(err: BaseException) -> str:
    """What went wrong in transit, by the exception's type only: messages of transport errors can
    carry URLs, so they are never copied."""
    if isinstance(err, (requests.Timeout, httpx.TimeoutException, TimeoutError)):
        kind = "timed out"
    elif isinstance(err, (requests.exceptions.ChunkedEncodingError, httpx.RemoteProtocolError, httpx.ReadError,
                          urllib3.exceptions.ProtocolError, http.client.IncompleteRead)):
        kind = "connection dropped or answer cut short"
    elif isinstance(err, (requests.exceptions.ContentDecodingError, httpx.DecodingError)):
        kind = "answer could not be decoded"
    elif isinstance(err, (requests.ConnectionError, httpx.ConnectError, ConnectionError)):
        kind = "connection failed"
    else:
        kind = "transport failed"
    return f"{kind} ({type(err).__name__})"


def send(session: requests.Session, method: str, url: str, *, what: str, service: str, timeout: float,
         **kwargs: Any) -> requests.Response:
    """Send a request and return once its status and headers are in (the body is read by
    :func:`read_body`, so that a body cut short still reports the answer's real status).

    :raises CrmTransientApiError: when no answer arrived (connection refused or reset, timeout).
    """
    try:
        return session.request(method, url, timeout=timeout, stream=True, **kwargs)
    except TRANSPORT_ERRORS as err:
        raise CrmTransientApiError(f"{what}: {failure_text(err)}", service=service) from None


def read_body(resp: requests.Response, *, what: str, service: str) -> bytes:
    """The whole body of an answer from :func:`send`.

    :raises CrmTransientApiError: with the answer's status when the body was cut short or undecodable.
    """
    try:
        # one read of the whole body: .content reads it 10 KB at a time, a Python step each (a third
        # of the CPU a 0.56 MB page of 500 deals costs to fetch)
        return b"".join(resp.iter_content(chunk_size=None))
    except TRANSPORT_ERRORS as err:
        resp.close()
        raise _cut_short(f"{what}: {failure_text(err)} while reading the body of an HTTP {resp.status_code} answer",
                         service, resp.status_code) from None


def _cut_short(message: str, service: str, status: int) -> CrmTransientApiError:
    # a 429 stays a rate-limit refusal (waited out, repeated even for a create) whatever became of its body
    cls = CrmRateLimitError if status == 429 else CrmTransientApiError
    return cls(message, service=service, status=status)


async def asend(client: httpx.AsyncClient, method: str, url: str, *, what: str, service: str,
                **kwargs: Any) -> httpx.Response:
    """The async twin of :func:`send` and :func:`read_body` together: the returned answer is read."""
    try:
        resp = await client.send(client.build_request(method, url, **kwargs), stream=True)
    except (httpx.HTTPError, OSError) as err:
        raise CrmTransientApiError(f"{what}: {failure_text(err)}", service=service) from None
    try:
        await resp.aread()
    except (httpx.HTTPError, OSError) as err:
        raise _cut_short(f"{what}: {failure_text(err)} while reading the body of an HTTP {resp.status_code} answer",
                         service, resp.status_code) from None
    finally:
        await resp.aclose()
    return resp


def not_json(content: bytes, content_type: str | None) -> str:
    """Says what an answer that should be JSON was instead: an HTML page, an empty body, or invalid
    JSON (cut short or garbled). The body itself is never quoted."""
    head = content[:512].lstrip().lower()
    if "html" in (content_type or "").lower() or head.startswith((b"<!doctype html", b"<html", b"<")):
        return "the answer is an HTML page, not JSON"
    if not head:
        return "the answer is empty, not JSON"
    return "the answer is not valid JSON (cut short or garbled)"
