"""The ceiling a scenario can reach, computed from the limits rather than guessed.

For N requests of R records each, against a sliding-window limit of L requests per W seconds, with C
requests in flight at a time and a latency of T seconds per request:

- the limit alone needs (ceil(N / L) - 1) x W seconds (the first window's worth goes at once);
- latency and concurrency alone need N x T / C seconds;
- the ceiling is N x R records over the larger of the two.

For long jobs this is min(L / W, C / T) x R, the formula in the issue; for jobs shorter than a window
it credits the burst the window allows.

The **plan ceiling** (:func:`plan_ceiling`) is the allowance alone: the fewest requests the job needs
(full pages, one write per row), the plan's own window limit (not the client's safety margin), the
first window's burst credited, and neither latency nor concurrency credited. It is what the user pays
for; the scenario ceiling above says how close the client gets with the concurrency it chose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airflow_provider_crm.clients.pipedrive.policy import BURST as PIPEDRIVE_BURST
from airflow_provider_crm.clients.pipedrive.policy import SEARCH_PER_2S as PIPEDRIVE_SEARCH_PER_2S
from airflow_provider_crm.clients.pipefy.policy import REQUESTS_PER_WINDOW as PIPEFY_PER_30S

__all__ = ["PIPEDRIVE_BURST", "PIPEDRIVE_SEARCH_PER_2S", "PIPEFY_PER_30S", "Ceiling", "plan_ceiling"]


@dataclass(frozen=True)
class Ceiling:
    requests: int
    records_per_request: float
    limit: int  # requests per window
    window_s: float
    concurrency: int
    latency_s: float

    @property
    def limit_seconds(self) -> float:
        return max(0, math.ceil(self.requests / self.limit) - 1) * self.window_s

    @property
    def latency_seconds(self) -> float:
        return self.requests * self.latency_s / self.concurrency

    @property
    def seconds(self) -> float:
        return max(self.limit_seconds, self.latency_seconds)

    @property
    def records_per_second(self) -> float:
        return self.requests * self.records_per_request / self.seconds if self.seconds else float("inf")

    @property
    def binding(self) -> str:
        return "rate limit" if self.limit_seconds >= self.latency_seconds else "latency x concurrency"


def plan_ceiling(records: int, min_requests: int, limit: int, window_s: float) -> Ceiling:
    """The plan's ceiling for ``records`` that need at least ``min_requests`` requests (see the module)."""
    return Ceiling(max(1, min_requests), records / max(1, min_requests), limit, window_s, 1_000_000, 0.0)
