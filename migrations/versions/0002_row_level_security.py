"""Apply policies.sql: the todo_app role, its grants, current_app_user() and the RLS policies.

Revision ID: 0002
Revises: 0001
"""

from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

POLICIES_SQL = Path(__file__).resolve().parents[2] / "policies.sql"


def upgrade() -> None:
    # Run as one simple-protocol script: policies.sql holds DO blocks and `%` characters.
    op.get_bind().connection.driver_connection.execute(POLICIES_SQL.read_text())


def downgrade() -> None:
    # todo_app stays: roles belong to the cluster, and other databases may use it.
    op.execute(
        """
        DROP POLICY todos_own_rows ON todos;
        DROP POLICY users_own_row ON users;
        ALTER TABLE todos NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
        ALTER TABLE users NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
        REVOKE ALL ON todos, users FROM todo_app;
        REVOKE USAGE ON SCHEMA public FROM todo_app;
        DROP FUNCTION current_app_user();
        """
    )
