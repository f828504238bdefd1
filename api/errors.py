"""Every error leaves as application/problem+json (RFC 9457) with an error_code.

Nothing internal reaches a response: no stack trace, SQL, or exception text. What no
handler here answers, api.observability answers with `unexpected`, a 500.
"""

import logging
import traceback
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from api import metrics
from db import idempotency, todos

log = logging.getLogger("todo.api")

PROBLEM_JSON = "application/problem+json"
RLS_REFUSAL = "new row violates row-level security policy"
RETRY_AFTER_S = "2"
MAX_FIELD_ERRORS = 20


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    error_code: str
    field_errors: list[FieldError] | None = None


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error_code: str,
        detail: str,
        field_errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        self.status, self.error_code, self.detail = status, error_code, detail
        self.field_errors, self.headers = field_errors, headers


def problem(error: ApiError) -> JSONResponse:
    body = Problem(
        title=HTTPStatus(error.status).phrase,
        status=error.status,
        detail=error.detail,
        error_code=error.error_code,
        field_errors=error.field_errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=error.status,
        headers=error.headers,
        media_type=PROBLEM_JSON,
    )


def _from_validation(errors: Sequence[Any]) -> ApiError:
    """Map FastAPI's validation errors to the error table of docs/api.md."""
    for error in errors:
        source, *path = error["loc"]
        if source == "path":
            return ApiError(400, "INVALID_TODO_ID", "The todo id in the path must be a UUID.")
        if source == "body" and error["type"] == "json_invalid":
            return ApiError(400, "MALFORMED_BODY", "The request body is not valid JSON.")
        if source == "body" and not path:
            if isinstance(error.get("input"), bytes):
                return ApiError(
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    "Send the body as JSON, with Content-Type: application/json.",
                )
            return ApiError(400, "MALFORMED_BODY", "The request body must be a JSON object.")
    # Capped, so that a body of thousands of bad keys gets a small answer.
    field_errors = [
        FieldError(field=".".join(str(part) for part in error["loc"][1:]), message=error["msg"])
        for error in errors[:MAX_FIELD_ERRORS]
    ]
    detail = "Some fields are invalid; see field_errors."
    if len(errors) > MAX_FIELD_ERRORS:
        detail = f"{len(errors)} fields are invalid; field_errors has the first {MAX_FIELD_ERRORS}."
    return ApiError(422, "VALIDATION_ERROR", detail, field_errors)


HTTP_ERRORS = {
    400: ("MALFORMED_BODY", "The request body could not be read as JSON."),
    404: ("NOT_FOUND", "There is nothing at this path."),
    405: ("METHOD_NOT_ALLOWED", "This method is not allowed on this path."),
    413: ("PAYLOAD_TOO_LARGE", "The request body is larger than 64 KiB."),
}


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method this path answers to. Starlette's own 405 names only the first route that
    matches the path, e.g. POST but not GET for /api/v1/todos."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


def _answering(error: ApiError) -> Any:
    async def answer(request: Request, outcome: Exception) -> JSONResponse:
        return problem(error)

    return answer


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return problem(error)

    for outcome, error in OUTCOMES.items():
        app.add_exception_handler(outcome, _answering(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return problem(_from_validation(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code, detail = HTTP_ERRORS.get(error.status_code, ("HTTP_ERROR", str(error.detail)))
        headers = error.headers
        if error.status_code == 405:
            headers = {"Allow": ", ".join(_allowed_methods(request))}
        return problem(ApiError(error.status_code, code, detail, headers=headers))

    @app.exception_handler(psycopg.OperationalError)
    async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
        kind = next(kind for cls, kind in UNAVAILABLE if isinstance(error, cls))
        metrics.DB_ERRORS.labels(kind).inc()
        log.warning("database unavailable: %s", error.__class__.__name__)
        return problem(
            ApiError(
                503,
                "SERVICE_UNAVAILABLE",
                "The database is unreachable or too slow right now; retry shortly.",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        )

    @app.exception_handler(psycopg.errors.InsufficientPrivilege)
    async def refused_by_policy(request: Request, error: Exception) -> JSONResponse:
        # Our own policies never refuse what the handlers write; one added to policies.sql
        # (on a token claim, say) may. Any other missing privilege is our fault: a 500.
        assert isinstance(error, psycopg.Error)
        if (error.diag.message_primary or "").startswith(RLS_REFUSAL):
            metrics.DB_ERRORS.labels("rls_refusal").inc()
            return problem(ApiError(403, *EXAMPLES[403]))
        return unexpected(error)


# The kinds of OperationalError, as todo_db_errors_total counts them; the first match wins.
UNAVAILABLE = (
    (PoolTimeout, "pool_timeout"),
    (psycopg.errors.QueryCanceled, "statement_timeout"),
    (psycopg.OperationalError, "unavailable"),
)


def unexpected(error: Exception) -> JSONResponse:
    """A 500 for what no handler expects. The log gets the exception's class and where it
    was raised, not its message: a database error's message can quote the row it refused."""
    where = "".join(traceback.format_tb(error.__traceback__))
    log.error("unexpected %s, raised at:\n%s", type(error).__name__, where.rstrip())
    if isinstance(error, psycopg.Error):
        metrics.DB_ERRORS.labels("other").inc()
    return problem(ApiError(500, *EXAMPLES[500]))


# What the database said about a request, and the error that tells the client.
OUTCOMES = {
    todos.NotFound: ApiError(404, "NOT_FOUND", "No todo with this id exists for this user."),
    todos.PreconditionFailed: ApiError(
        412,
        "PRECONDITION_FAILED",
        "The todo has changed since the ETag in If-Match; read it again, then retry.",
    ),
    idempotency.KeyReused: ApiError(
        422,
        "IDEMPOTENCY_KEY_REUSED",
        "This Idempotency-Key was used for a different request; use a new key for a new request.",
    ),
    idempotency.KeyInFlight: ApiError(
        409,
        "IDEMPOTENCY_IN_PROGRESS",
        "A request with this Idempotency-Key was still being processed; retry to get its answer.",
        headers={"Retry-After": RETRY_AFTER_S},
    ),
}


EXAMPLES = {
    400: ("HEADERS_TOO_LARGE", "The request headers are larger than 16 KiB."),
    401: (
        "MISSING_CREDENTIALS",
        "Send a token from the identity provider as Authorization: Bearer <token>.",
    ),
    403: ("FORBIDDEN", "The database's access policies do not allow this."),
    **{error.status: (error.error_code, error.detail) for error in OUTCOMES.values()},
    413: ("PAYLOAD_TOO_LARGE", "The request body is larger than 64 KiB."),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Send the body as JSON, with Content-Type: application/json."),
    422: ("VALIDATION_ERROR", "Some fields are invalid; see field_errors."),
    500: ("INTERNAL_ERROR", "Something went wrong on our side."),
    503: (
        "SERVICE_UNAVAILABLE",
        "The database is unreachable or too slow right now; retry shortly.",
    ),
}
DESCRIPTIONS = {
    400: "INVALID_TODO_ID, MALFORMED_BODY, HEADERS_TOO_LARGE, or behind a trusted gateway"
    " MISSING_USER_CONTEXT or INVALID_USER_ID",
    401: "MISSING_CREDENTIALS, INVALID_TOKEN or TOKEN_EXPIRED, with a WWW-Authenticate header",
    403: "FORBIDDEN: a policy added to policies.sql (on a token claim, say) refuses this",
    404: "NOT_FOUND: no such todo for this user (someone else's todo answers the same)",
    409: "IDEMPOTENCY_IN_PROGRESS: a request with the same Idempotency-Key committed while this"
    " one ran; this one wrote nothing. Retry after Retry-After seconds to get its answer",
    412: "PRECONDITION_FAILED: If-Match names none of the todo's current ETag; nothing changed",
    413: "PAYLOAD_TOO_LARGE: body over 64 KiB",
    415: "UNSUPPORTED_MEDIA_TYPE: body not sent as JSON",
    422: "VALIDATION_ERROR (see field_errors), or IDEMPOTENCY_KEY_REUSED: the Idempotency-Key"
    " was used for a different method, path or body",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE (database unreachable or timing out) or AUTH_UNAVAILABLE (no keys"
    " from the identity provider yet); retry after Retry-After seconds",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, as problem+json with an example."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        code, detail = EXAMPLES[status]
        example = Problem(
            title=HTTPStatus(status).phrase, status=status, detail=detail, error_code=code
        ).model_dump(exclude_none=True)
        if status == 422:
            example["field_errors"] = [{"field": "title", "message": "Field required"}]
        entry: dict[str, Any] = {
            "description": DESCRIPTIONS[status],
            "content": {
                PROBLEM_JSON: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": example,
                }
            },
        }
        if status == 401:
            entry["headers"] = {
                "WWW-Authenticate": {"description": "RFC 6750", "schema": {"type": "string"}}
            }
        if status in (409, 503):
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }
        documented[status] = entry
    return documented
