"""Run the sandbox in a background thread (for tests, benchmarks and ``make demo``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from crm_sandbox.app import create_app, describe, save_snapshot
from crm_sandbox.core import SandboxConfig


class SandboxServer:
    """A sandbox on loopback, serving from a daemon thread.

    Usage::

        with SandboxServer(SandboxConfig(seed=1)) as sandbox:
            requests.get(sandbox.url + "/_sandbox/health")
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.app = create_app(self.config)
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=self.config.host,
                port=self.config.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_keep_alive=30,
                limit_concurrency=2000,
                backlog=2048,
            )
        )
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def state(self) -> Any:
        return self.app.app.state.sandbox  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def info(self) -> dict[str, Any]:
        return describe(self.url, self.config)

    def start(self, timeout: float = 10.0) -> SandboxServer:
        self._thread = threading.Thread(target=self._server.run, name="crm-sandbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("crm-sandbox did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread:
            self._thread.join(timeout=10)
        if self.config.snapshot:
            save_snapshot(self.state, Path(self.config.snapshot))

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
