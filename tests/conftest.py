"""Shared fixtures: a real sandbox over HTTP, and a clean Airflow home for each test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

# Airflow reads its configuration at import: point it at a throw-away home before anything imports it.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="crm-airflow-home-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
# Every test gets its own rate-limit file store unless it asks for another.
os.environ.setdefault("AIRFLOW__CRM__RATE_LIMIT_DIR", tempfile.mkdtemp(prefix="crm-ratelimit-"))

import requests  # noqa: E402

from crm_sandbox.core import SandboxConfig  # noqa: E402
from crm_sandbox.server import SandboxServer  # noqa: E402


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    """One in-process sandbox for the whole session (reset before each test by ``sandbox``)."""
    with SandboxServer(SandboxConfig()) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    """The sandbox, reset to its seeded state: data, counters, faults and clock."""
    requests.post(f"{sandbox_server.url}/_sandbox/reset", timeout=10).raise_for_status()
    return sandbox_server


@pytest.fixture
def make_sandbox() -> Iterator:
    """Start a dedicated sandbox with its own config: ``make_sandbox(latency_ms=50)``."""
    servers: list[SandboxServer] = []

    def _make(**overrides: object) -> SandboxServer:
        server = SandboxServer(SandboxConfig(**overrides)).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield _make
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def watermarks(monkeypatch: pytest.MonkeyPatch):
    """Each test starts with no export watermarks; real Airflow runs (e2e) use real Variables."""
    from airflow_provider_crm.common import watermark

    store = watermark.MemoryVariables()
    monkeypatch.setattr(watermark, "backend", store)
    return store
