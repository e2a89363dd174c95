"""Emulated pipefy API (to be filled in)."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute

from airflow_provider_crm.sandbox.core import SandboxState


class PipefyService:
    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def routes(self) -> list[BaseRoute]:
        return []

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        pass
