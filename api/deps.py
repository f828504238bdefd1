"""Request dependencies: who is calling, and the transaction that acts for them."""

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Header, Query, Request

from api.errors import ApiError, FieldError
from db import todos
from db.transaction import Transaction


def caller_id(
    request: Request,
    x_user_id: Annotated[
        str | None,
        Header(
            description="The caller's id, a UUID, set by the trusted gateway in front of us.",
            examples=["3f0c6e9e-8d3a-4c1b-9a57-0c6d2b7c9e11"],
        ),
    ] = None,
) -> UUID:
    if x_user_id is None:
        raise ApiError(
            400, "MISSING_USER_CONTEXT", "Send the caller's id as a UUID in the X-User-ID header."
        )
    if len(request.headers.getlist("x-user-id")) > 1:
        raise ApiError(400, "INVALID_USER_ID", "Send exactly one X-User-ID header.")
    try:
        return UUID(x_user_id)
    except ValueError:
        raise ApiError(400, "INVALID_USER_ID", "X-User-ID must be a UUID.") from None


UserIdDep = Annotated[UUID, Depends(caller_id)]


def transaction(request: Request, user_id: UserIdDep) -> Transaction:
    state = request.app.state
    return Transaction(state.pool, user_id, state.settings.db_statement_timeout_ms)


TxDep = Annotated[Transaction, Depends(transaction)]


def page(
    completed: Annotated[
        bool | None, Query(description="Only completed, or only open, todos.")
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=1000, description="Page size; without it, all todos.")
    ] = None,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` from the previous page.", max_length=200)
    ] = None,
) -> todos.Page:
    try:
        after = todos.decode_cursor(cursor) if cursor is not None else None
    except ValueError as error:
        raise ApiError(
            422,
            "VALIDATION_ERROR",
            "Some fields are invalid; see field_errors.",
            [FieldError(field="cursor", message=f"Value error, {error}")],
        ) from None
    return todos.Page(completed=completed, limit=limit, after=after)


PageDep = Annotated[todos.Page, Depends(page)]
