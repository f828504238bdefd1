"""The FastAPI application."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from opentelemetry.sdk.trace import TracerProvider

from api import errors, identity, logs, metrics, observability, tracing
from api.body_limit import BodySizeLimit
from api.routes import PREFIX, ops, router
from api.settings import Settings, get_settings
from db import idempotency
from db.connection import Pool, resolve_url

MAX_BODY_BYTES = 64 * 1024


def pool_for(settings: Settings, url: str) -> Pool:
    return Pool(
        url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_pool_timeout_s,
        connect_timeout=settings.db_connect_timeout_s,
        reconnect_timeout=settings.db_reconnect_timeout_s,
        prepared_statements=settings.db_prepared_statements,
    )


def create_app(
    settings: Settings | None = None, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    """The app; it exports traces with `tracer_provider`, or as the environment says."""
    settings = settings or get_settings()
    logs.configure(settings.log_format)
    caller_identity = identity.from_settings(settings)  # fails closed: no identity, no app
    tracer_provider = tracer_provider or tracing.from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = pool_for(settings, resolve_url(settings.neon_database_url))
        await pool.open(wait=False)
        app.state.pool = pool
        tasks = [
            asyncio.create_task(idempotency.sweep_forever(pool, settings.db_statement_timeout_ms)),
            asyncio.create_task(metrics.watch_pool(pool)),
        ]
        try:
            await caller_identity.start()
            yield
        finally:
            for task in tasks:
                task.cancel()
            await caller_identity.close()
            await pool.close()
            metrics.forget_this_worker()
            if tracer_provider:
                tracer_provider.shutdown()  # sends the spans not yet exported

    app = FastAPI(
        title="Todo API",
        version="1.0.0",
        description="Per-user todos; isolation is enforced by PostgreSQL Row-Level Security.",
        lifespan=lifespan,
        # `/api/v1/todos/` is an unknown path (404), not a redirect built from `Host`.
        redirect_slashes=False,
        # api.observability makes the spans, metrics and logs; FastAPI's own would double
        # them under a global OpenTelemetry provider, and checks for one on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.identity = caller_identity
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.state.tracer = tracer_provider and tracer_provider.get_tracer("todo-api")
    # Added last: outside the others, so it sees every answer.
    app.add_middleware(observability.Observe, tracer=app.state.tracer)
    app.include_router(router)
    app.include_router(ops)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's way
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the Problem schema that every error response refers to, the
    identity mode's security scheme (so the docs page's Authorize button works), and the
    request id and timing headers of every operation."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        problem = errors.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(problem.pop("$defs"))
        components["Problem"] = problem
        schema["components"]["securitySchemes"] = {"caller": app.state.identity.scheme}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path.startswith(PREFIX):
                    operation["security"] = [{"caller": []}]
                operation.setdefault("parameters", []).append(observability.REQUEST_ID_PARAMETER)
                for response in operation["responses"].values():
                    response.setdefault("headers", {}).update(observability.RESPONSE_HEADERS)
        app.openapi_schema = schema
    return app.openapi_schema
