"""The todo_app role, its grants, current_app_user() and the RLS policies, as policies.sql
first wrote them. The newest migration that changes policies.sql applies the file itself; this
one keeps the version it applied, so that upgrading from scratch passes through it unchanged.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

POLICIES_SQL = """
-- The security model of the todo service, top to bottom.
--
-- Every request runs in one transaction that first does
--   SELECT set_config('role', 'todo_app', true), set_config('app.user_id', <caller>, true)
-- so everything below applies to it, whatever role the connection string logs in as.
--
-- This file is idempotent: it may run again on a database that already has it,
-- and todo_app may already exist (roles belong to the whole cluster).
-- Migration 0002 applies it. If you change it, add a migration that applies it again.

-- 1. The runtime role. It cannot log in, is not a superuser and cannot bypass RLS,
--    so switching to it is what makes the policies below apply. (Neon creates its
--    Console roles, neondb_owner included, WITH BYPASSRLS: only this switch restrains them.)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'todo_app') THEN
        CREATE ROLE todo_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END
$$;

-- 2. The role that runs migrations may switch to todo_app. A role that only serves
--    needs `GRANT todo_app TO <runtime role>` from an admin (see README, Deploying on Neon).
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'todo_app', 'MEMBER') THEN
        EXECUTE format('GRANT todo_app TO %I', current_user);
    END IF;
END
$$;

-- 3. Only the privileges the API uses. No sequences (ids come from gen_random_uuid()),
--    no TRUNCATE, no DDL, no UPDATE or DELETE on users.
GRANT USAGE ON SCHEMA public TO todo_app;
GRANT SELECT, INSERT ON users TO todo_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON todos TO todo_app;

-- 4. The current user: the transaction's app.user_id, or NULL ("no user") when it is
--    unset, empty, or reset because a pooled connection's transaction ended.
--    NULL matches no row, so no context means zero rows visible and every write refused.
CREATE OR REPLACE FUNCTION current_app_user() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$;
GRANT EXECUTE ON FUNCTION current_app_user() TO todo_app;

-- 5. RLS on, and forced, so even the tables' owner is subject to it (a superuser never is:
--    never serve as one). The policies name only todo_app (and so its members), so any
--    role without a user set sees nothing.
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
ALTER TABLE todos FORCE ROW LEVEL SECURITY;

-- 6. The policies. USING decides which existing rows a statement can see, update or
--    delete; WITH CHECK decides which rows it may write. Both compare the owner to the
--    current user, so a row can be neither read by, created for, nor moved to anyone else.
--    `(SELECT current_app_user())` is evaluated once per statement (an InitPlan), so the
--    (user_id, ...) index serves the comparison instead of a call per row.

-- A user sees and creates only their own users row.
DROP POLICY IF EXISTS users_own_row ON users;
CREATE POLICY users_own_row ON users
    FOR ALL TO todo_app
    USING (id = (SELECT current_app_user()))
    WITH CHECK (id = (SELECT current_app_user()));

-- A user sees, creates, changes and deletes only their own todos, and cannot give one away.
DROP POLICY IF EXISTS todos_own_rows ON todos;
CREATE POLICY todos_own_rows ON todos
    FOR ALL TO todo_app
    USING (user_id = (SELECT current_app_user()))
    WITH CHECK (user_id = (SELECT current_app_user()));
"""


def upgrade() -> None:
    # Run as one simple-protocol script: policies.sql holds DO blocks and `%` characters.
    op.get_bind().connection.driver_connection.execute(POLICIES_SQL)


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
