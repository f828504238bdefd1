"""Idempotency keys: a write's answer, recorded in the same statement, replayed to retries."""

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.errors import UniqueViolation

from db import responses
from db.connection import Pool
from db.transaction import SET_CONTEXT, Statement, Transaction, context

log = logging.getLogger("todo.idempotency")

SWEEP_EVERY_S = 300


@dataclass(frozen=True)
class Key:
    """An Idempotency-Key, and a fingerprint of the request it came with."""

    value: str
    fingerprint: str

    @classmethod
    def of(cls, value: str, method: str, path: str, body: bytes) -> "Key":
        digest = hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()
        return cls(value, digest)


class KeyReused(Exception):
    """The key's recorded answer is for a different method, path or body."""


class KeyInFlight(Exception):
    """A request with the same key committed while this one ran: this one wrote nothing."""


@dataclass(frozen=True)
class Outcome:
    # id, version and body (JSON) of the todo written, or of the recorded one; None: nothing
    answer: dict[str, Any] | None
    replayed: bool
    found: bool  # whether the todo the write targets exists (for 404 versus 412)


# A key is free again 24 hours after its write (policies.sql says so too, for the sweep).
FORGET_EXPIRED = """
DELETE FROM idempotency_keys
WHERE user_id = %(user)s AND key = %(key)s AND created_at <= now() - interval '24 hours'
"""

# What every write returns (db.todos: RETURNING {ANSWER}), and so what an answer is recorded
# with (to_jsonb of that row). A replay reads it back with these types, never with the
# table's row type: columns added to todos since, or changed, do not touch answers recorded
# before.
RECORDED = {
    "id": "uuid",
    "user_id": "uuid",
    "title": "text",
    "description": "text",
    "is_completed": "boolean",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "version": "bigint",
}
ANSWER = ", ".join(RECORDED)
AS_RECORDED = ", ".join(f"{name} {type_}" for name, type_ in RECORDED.items())

# Every write runs inside this statement. `replay` is the answer already recorded under the
# request's key (nothing without a key), and {write} must not run when there is one; the
# answer of a write that runs is recorded under the key in the same statement, as its row,
# and a replay writes the body from that row again. A duplicate racing the original sees no
# answer yet and writes too, but its insert into idempotency_keys waits for the original to
# commit and then violates the primary key, which rolls back everything it wrote.
ONCE = f"""
WITH replay AS (
    SELECT fingerprint, response FROM idempotency_keys
    WHERE user_id = %(user)s AND key = %(key)s
), written AS (
    {{write}}
), recorded AS (
    INSERT INTO idempotency_keys (user_id, key, fingerprint, response)
    SELECT user_id, %(key)s, %(fingerprint)s, to_jsonb(written) FROM written
    WHERE %(key)s IS NOT NULL
), answer AS (
    SELECT {ANSWER} FROM written
    UNION ALL
    SELECT {ANSWER} FROM replay, jsonb_to_record(replay.response)
        AS stored({AS_RECORDED})
)
SELECT answer.id, answer.version, {responses.todo("answer")}::text AS body,
       (SELECT fingerprint FROM replay) AS replayed_fingerprint,
       EXISTS (SELECT FROM todos WHERE id = %(id)s AND user_id = %(user)s) AS found
FROM (VALUES (true)) AS outcome LEFT JOIN answer ON true  -- one row, answer or none
"""
NOT_REPLAYED = "NOT EXISTS (SELECT FROM replay)"


async def write_once(
    tx: Transaction,
    name: str,
    write: sql.Composable,
    params: dict[str, Any],
    key: Key | None,
    *before: Statement,
) -> Outcome:
    """Run `write`, the statement `name` (which names NOT_REPLAYED in its WHERE clause),
    unless `key` has an answer.

    One transaction, one round trip: the statements `before`, then the write and its record.
    """
    params = {
        **params,
        "user": tx.user_id,
        "key": key.value if key else None,
        "fingerprint": key.fingerprint if key else None,
    }
    forget = [Statement("forget expired key", FORGET_EXPIRED, params)] if key else []
    statement = Statement(name, sql.SQL(ONCE).format(write=write), params)
    try:
        [row] = await tx.fetch(*forget, *before, statement)
    except UniqueViolation as error:
        if error.diag.constraint_name == "idempotency_keys_pkey":
            raise KeyInFlight from None
        raise
    replayed = row.pop("replayed_fingerprint")
    found = row.pop("found")
    if replayed is not None:
        assert key is not None
        if replayed != key.fingerprint:
            raise KeyReused
        return Outcome(row, replayed=True, found=True)
    return Outcome(row if row["id"] is not None else None, replayed=False, found=found)


# Run with no user, and reading no column: only the expiry policy in policies.sql lets a row
# through, and the read policy, which would hide every row, does not apply.
SWEEP = "DELETE FROM idempotency_keys"


async def sweep(pool: Pool, statement_timeout_ms: int) -> int:
    """Remove every user's expired keys; returns how many."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_CONTEXT, context(statement_timeout_ms))
        return (await conn.execute(SWEEP)).rowcount


async def sweep_forever(pool: Pool, statement_timeout_ms: int) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        try:
            removed = await sweep(pool, statement_timeout_ms)
        except psycopg.Error as error:  # the database is away: the next sweep will do it
            log.warning("idempotency key sweep failed: %s", error.__class__.__name__)
        else:
            log.info("idempotency key sweep removed %d expired keys", removed)
