"""Client-side rate limiting, service-neutral: :mod:`.policy` (what a service's limits are),
:mod:`.stores` (where they are shared) and :mod:`.limiter` (the engine). Each service's numbers live in
``clients/<service>/policy.py``."""
