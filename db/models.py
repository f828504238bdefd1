"""Tables (SQLModel) and the API schemas beside them.

The tables mirror migrations/versions; the schemas are what the API reads and writes.
Request schemas reject unknown fields, so `id`, `user_id` and timestamps are never accepted.
"""

import uuid
from datetime import UTC, datetime
from typing import Annotated

import sqlmodel
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, field_serializer
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import SQLModel

TITLE_MAX = 255
DESCRIPTION_MAX = 2000


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: uuid.UUID = sqlmodel.Field(primary_key=True)
    created_at: datetime = sqlmodel.Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )
    # The token's `iss` and `sub` this user was created from; null behind a trusted gateway.
    issuer: str | None = sqlmodel.Field(sa_column=Column(Text, nullable=True))
    subject: str | None = sqlmodel.Field(sa_column=Column(Text, nullable=True))


class Todo(SQLModel, table=True):
    __tablename__ = "todos"
    __table_args__ = (
        CheckConstraint("btrim(title) <> ''", name="todos_title_not_blank"),
        Index("todos_user_created_idx", "user_id", text("created_at DESC"), text("id DESC")),
    )

    id: uuid.UUID = sqlmodel.Field(
        primary_key=True, sa_column_kwargs={"server_default": text("gen_random_uuid()")}
    )
    user_id: uuid.UUID = sqlmodel.Field(foreign_key="users.id", ondelete="CASCADE", nullable=False)
    title: str = sqlmodel.Field(sa_column=Column(String(TITLE_MAX), nullable=False))
    description: str | None = sqlmodel.Field(
        sa_column=Column(String(DESCRIPTION_MAX), nullable=True)
    )
    is_completed: bool = sqlmodel.Field(
        default=False, sa_column_kwargs={"server_default": text("false")}
    )
    created_at: datetime = sqlmodel.Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )
    updated_at: datetime = sqlmodel.Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )
    # 1, then one more on every update (a trigger): what the todo's ETag names.
    version: int = sqlmodel.Field(
        sa_column=Column(BigInteger, nullable=False, server_default=text("1"))
    )


class IdempotencyKey(SQLModel, table=True):
    """The answer to a write sent with an Idempotency-Key, recorded in the write's transaction."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("idempotency_keys_created_idx", "created_at"),)

    user_id: uuid.UUID = sqlmodel.Field(
        primary_key=True, foreign_key="users.id", ondelete="CASCADE"
    )
    key: str = sqlmodel.Field(primary_key=True, max_length=255)
    fingerprint: str = sqlmodel.Field(sa_column=Column(Text, nullable=False))
    response: dict[str, object] = sqlmodel.Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime = sqlmodel.Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    )


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL. (Lone surrogates, which UTF-8 cannot encode either,
    # never get this far: pydantic refuses them as strings.)
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# The two validators above as JSON Schema patterns, so /openapi.json states them too. The
# whitespace is spelled out because regex dialects disagree on `\s`; it is what strip() removes.
_WHITESPACE = "".join(filter(str.isspace, map(chr, range(0x3001))))
NO_NUL_PATTERN = "^[^\x00]*$"
NOT_BLANK_PATTERN = f"^[^\x00]*[^{_WHITESPACE}\x00][^\x00]*$"

Title = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TITLE_MAX,
        examples=["Buy milk"],
        json_schema_extra={"pattern": NOT_BLANK_PATTERN},
    ),
    AfterValidator(_not_blank),
    AfterValidator(_storable),
]
Description = Annotated[
    str,
    Field(
        max_length=DESCRIPTION_MAX,
        examples=["2 litres, semi-skimmed"],
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    ),
    AfterValidator(_storable),
]
Completed = Annotated[bool, Strict()]


class TodoCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    description: Description | None = None
    is_completed: Completed = False


class TodoUpdate(BaseModel):
    """Partial update: an omitted field is unchanged. `title` and `is_completed` cannot be null."""

    model_config = ConfigDict(extra="forbid")

    title: Title = None  # type: ignore[assignment]  # omitted = unchanged; null is rejected
    description: Description | None = None
    is_completed: Completed = None  # type: ignore[assignment]


class TodoPublic(BaseModel):  # pydantic's own validation: 4x faster per row than SQLModel's
    id: uuid.UUID
    user_id: uuid.UUID
    title: str
    description: str | None
    is_completed: bool
    created_at: datetime
    updated_at: datetime

    # The database writes the responses (db/responses.py), as this serializer wrote them;
    # it still tells /openapi.json that a timestamp is a string, and tests/test_json_contract.py
    # holds the database to it.
    @field_serializer("created_at", "updated_at")
    def _in_utc(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat()


class TodoList(BaseModel):
    items: list[TodoPublic]
    count: int = Field(description="Number of items in this response.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )
