"""The per-request transaction: the one place a request touches the database."""

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

from opentelemetry import trace
from psycopg.abc import QueryNoTemplate
from psycopg.errors import DuplicatePreparedStatement, InvalidSqlStatementName
from psycopg.rows import dict_row

from db.connection import Pool

RUNTIME_ROLE = "todo_app"

# First statement of every transaction. Bind parameters, never string formatting;
# `true` makes each setting transaction-local, so nothing outlives the transaction.
# request.jwt.claims carries the verified token's claims (`{}` behind a trusted gateway) for
# policies that read them, as PostgREST, Supabase and the Neon Data API name it.
# The pinned search_path puts pg_temp last: a temporary table that someone with the
# service's credentials left on a pooled connection cannot shadow `todos` or `users`.
# TimeZone and DateStyle are pinned because the database writes the responses' timestamps:
# a role's or database's own settings must not change a byte of them.
SET_CONTEXT = """
SELECT set_config('role', %s, true),
       set_config('app.user_id', %s, true),
       set_config('request.jwt.claims', %s, true),
       set_config('statement_timeout', %s, true),
       set_config('search_path', 'public, pg_temp', true),
       set_config('TimeZone', 'UTC', true),
       set_config('DateStyle', 'ISO, YMD', true)
"""


class Statement(NamedTuple):
    name: str  # what traces show: never the SQL's parameters
    sql: QueryNoTemplate
    params: Sequence[Any] | Mapping[str, Any]


def context(statement_timeout_ms: int, user_id: str = "", claims: str = "{}") -> tuple[str, ...]:
    """SET_CONTEXT's parameters; with no user_id, the context of no user (zero rows visible)."""
    return (RUNTIME_ROLE, user_id, claims, str(statement_timeout_ms))


@dataclass(frozen=True)
class Caller:
    """Who a request acts for. Behind a trusted gateway there is no token: no issuer, no
    subject, and no claims."""

    user_id: UUID
    issuer: str | None = None
    subject: str | None = None
    claims: str = "{}"  # the verified JWT claims, as JSON


class Transaction:
    """One request's database work, run as `todo_app` on behalf of one caller."""

    def __init__(
        self,
        pool: Pool,
        caller: Caller,
        statement_timeout_ms: int,
        tracer: trace.Tracer | None = None,  # None: no spans
        read_only: bool = False,
    ):
        self.pool = pool
        self.caller = caller
        self.user_id = caller.user_id
        self.tracer = tracer
        self.elapsed_s = 0.0  # waiting for a connection, and the round trip
        self._context = context(statement_timeout_ms, str(caller.user_id), caller.claims)
        # A read-only transaction refuses every write, whatever its statements say.
        self._begin = "BEGIN READ ONLY" if read_only else "BEGIN"

    async def fetch(self, *statements: Statement) -> list[dict[str, Any]]:
        """Run the statements in one transaction and return the rows of the last one.

        BEGIN, the context, the statements and COMMIT go out in one pipeline: one round trip.
        The commit is confirmed before this returns, so a caller that answers afterwards
        answers about durable data. Any error rolls the whole transaction back.
        """
        started = time.perf_counter()
        span = self.tracer and self.tracer.start_span(
            "db transaction",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.query.summary": "; ".join(statement.name for statement in statements),
            },
        )
        try:
            return await self._run_again_if_lost(statements)
        except BaseException as error:
            if span:  # the class only: psycopg's messages can quote the row being written
                span.set_status(trace.StatusCode.ERROR, type(error).__name__)
            raise
        finally:
            self.elapsed_s += time.perf_counter() - started
            if span:
                span.end()

    async def _run_again_if_lost(self, statements: Sequence[Statement]) -> list[dict[str, Any]]:
        try:
            return await self._run(statements)
        except (InvalidSqlStatementName, DuplicatePreparedStatement):
            # A pooler that the pool did not detect lost or mixed up a prepared statement.
            # The transaction failed before it could commit, so running it again is safe.
            self.pool.stop_preparing("a prepared statement went missing behind a pooler")
            return await self._run(statements)

    async def _run(self, statements: Sequence[Statement]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            try:
                # Explicit BEGIN/COMMIT: conn.transaction() would sync the pipeline at both ends.
                async with conn.pipeline():
                    await conn.execute(self._begin)
                    await conn.execute(SET_CONTEXT, self._context)
                    for _, sql, params in statements:
                        cursor = conn.cursor(row_factory=dict_row)
                        await cursor.execute(sql, params)
                    await conn.execute("COMMIT")
            except BaseException:
                # A failed statement makes the server skip the rest, COMMIT included.
                if not conn.closed:
                    await conn.rollback()
                raise
        return await cursor.fetchall()
