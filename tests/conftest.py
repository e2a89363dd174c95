"""Shared fixtures: a real sandbox over HTTP, and a clean Airflow home for each test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
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


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throw-away redis-server on a free loopback port, for the distributed limiter and claims."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it with apt)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)

