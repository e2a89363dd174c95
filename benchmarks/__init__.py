"""``make bench``: throughput against the rate-limit ceiling, and peak memory, against the sandbox."""
