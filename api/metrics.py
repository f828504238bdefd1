"""Prometheus metrics for /metrics, summed across worker processes when there are several.

With PROMETHEUS_MULTIPROC_DIR set (`serve --workers N` sets it), each worker writes its
values to files there and /metrics reads them all (prometheus_client's multiprocess mode).
No label ever holds a user id, a raw path or anything else a client chooses freely.
"""

import asyncio
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from db.connection import Pool

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
CONTENT_TYPE = CONTENT_TYPE_LATEST
POOL_EVERY_S = 1.0
# The *_created series: twice the text, for nothing we watch.
disable_created_metrics()  # type: ignore[no-untyped-call]

REQUESTS = Counter(
    "todo_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "todo_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Sampled from each worker's pool every POOL_EVERY_S, and summed over the live workers.
POOL_SIZE = Gauge(
    "todo_db_pool_connections", "Open database connections.", multiprocess_mode="livesum"
)
POOL_IDLE = Gauge(
    "todo_db_pool_idle_connections",
    "Open database connections not in use.",
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "todo_db_pool_waiting_requests",
    "Requests waiting for a database connection.",
    multiprocess_mode="livesum",
)
DB_ERRORS = Counter(
    "todo_db_errors",
    "Database errors that reached a request, by kind: pool_timeout (no connection free in"
    " time), statement_timeout, unavailable (unreachable or connection lost), rls_refusal,"
    " other.",
    ["kind"],
)
AUTH_FAILURES = Counter(
    "todo_auth_failures", "Requests refused for their identity, by error_code.", ["reason"]
)
JWKS_FETCHES = Counter(
    "todo_jwks_fetches", "Fetches of the identity provider's keys, by outcome.", ["outcome"]
)
REPLAYS = Counter(
    "todo_idempotent_replays", "Writes answered with the answer recorded under their key."
)


def exposition() -> bytes:
    """The metrics in Prometheus' text format: every worker's, in multiprocess mode."""
    if not MULTIPROCESS:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


async def watch_pool(pool: Pool) -> None:
    while True:
        stats = pool.get_stats()
        POOL_SIZE.set(stats["pool_size"])
        POOL_IDLE.set(stats["pool_available"])
        POOL_WAITING.set(stats["requests_waiting"])
        await asyncio.sleep(POOL_EVERY_S)


def forget_this_worker() -> None:
    """This worker's gauges leave the sums when it stops (counters stay: they happened)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
