"""Idempotency keys, and a version on each todo that its ETag names.

`todos.version` starts at 1 and goes up by one on every update, whoever updates: the trigger
that already stamps updated_at now does both. Timestamps alone would not do: two updates can
share a microsecond, and now() is the same for a whole transaction.

`idempotency_keys` records the answer of each write sent with an Idempotency-Key, under RLS
like todos. policies.sql gains its grants and policies, so it is applied again.

Revision ID: 0004
Revises: 0003
"""

from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

POLICIES_SQL = Path(__file__).resolve().parents[2] / "policies.sql"


def upgrade() -> None:
    op.add_column(
        "todos", sa.Column("version", sa.BigInteger(), nullable=False, server_default="1")
    )
    op.execute(
        """
        CREATE FUNCTION stamp_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            NEW.version := OLD.version + 1;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER todos_set_updated_at ON todos")
    op.execute("DROP FUNCTION set_updated_at()")
    op.execute(
        "CREATE TRIGGER todos_stamp_update BEFORE UPDATE ON todos"
        " FOR EACH ROW EXECUTE FUNCTION stamp_update()"
    )
    op.create_table(
        "idempotency_keys",
        sa.Column(
            "user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("response", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("user_id", "key", name="idempotency_keys_pkey"),
    )
    op.create_index("idempotency_keys_created_idx", "idempotency_keys", ["created_at"])
    # Simple protocol, one script: policies.sql holds DO blocks and `%` characters.
    op.get_bind().connection.driver_connection.execute(POLICIES_SQL.read_text())


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.execute("DROP TRIGGER todos_stamp_update ON todos")
    op.execute("DROP FUNCTION stamp_update()")
    op.execute(
        """
        CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER todos_set_updated_at BEFORE UPDATE ON todos"
        " FOR EACH ROW EXECUTE FUNCTION set_updated_at()"
    )
    op.drop_column("todos", "version")
