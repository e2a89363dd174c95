"""The ceiling a scenario can reach, computed from the limits rather than guessed.

ceiling (records/s) = min(requests/s the limits allow, usable concurrency / latency) x records per call
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ceiling:
    limit_rps: float  # requests per second the binding rate limit allows
    concurrency: int  # requests the client can have in flight at once
    latency_s: float  # seconds per request (sandbox latency + a measured per-call overhead)
    records_per_call: float

    @property
    def latency_rps(self) -> float:
        return self.concurrency / self.latency_s if self.latency_s > 0 else float("inf")

    @property
    def requests_per_second(self) -> float:
        return min(self.limit_rps, self.latency_rps)

    @property
    def records_per_second(self) -> float:
        return self.requests_per_second * self.records_per_call

    @property
    def binding(self) -> str:
        return "rate limit" if self.limit_rps <= self.latency_rps else "latency x concurrency"


PIPEDRIVE_BURST = {"lite": (20, 80), "growth": (40, 160), "premium": (100, 400), "ultimate": (120, 480)}


def pipedrive_rps(plan: str, auth: str = "token", safety: float = 1.0) -> float:
    token, oauth = PIPEDRIVE_BURST[plan]
    return (token if auth == "token" else oauth) * safety / 2.0


def pipefy_rps(requests_per_30s: int = 500, safety: float = 1.0) -> float:
    return requests_per_30s * safety / 30.0
