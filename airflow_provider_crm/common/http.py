"""The requests session the hooks share between their threads."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter

# Connections a session keeps per host: each reader thread (one per slice or phase) holds one, and
# urllib3's default of 10 would drop and reopen connections beyond that.
POOL_SIZE = 32


def pooled_session(user_agent: str = "airflow-provider-crm") -> requests.Session:
    """A requests session sized for parallel readers (see ``POOL_SIZE``)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"User-Agent": user_agent})
    return session
