-- The security model of the todo service, top to bottom.
--
-- Every request runs in one transaction that first does
--   SELECT set_config('role', 'todo_app', true), set_config('app.user_id', <caller>, true)
-- so everything below applies to it, whatever role the connection string logs in as.
--
-- This file is idempotent: it may run again on a database that already has it,
-- and todo_app may already exist (roles belong to the whole cluster).
-- Migration 0004 applies it. If you change it, add a migration that applies it again, and
-- give the one that applied it before a copy of the version it applied, as 0002 has.
-- db/rls_probe.sql lists the grants and policies too (it runs without this file): change both.

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
--    no TRUNCATE, no DDL, no UPDATE or DELETE on users, no UPDATE of a recorded answer.
GRANT USAGE ON SCHEMA public TO todo_app;
GRANT SELECT, INSERT ON users TO todo_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON todos TO todo_app;
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO todo_app;

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
ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;

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

-- A user sees, records and replays only their own idempotency keys, and the answers stored
-- under them (their own todos).
DROP POLICY IF EXISTS idempotency_keys_own_rows ON idempotency_keys;
CREATE POLICY idempotency_keys_own_rows ON idempotency_keys
    FOR ALL TO todo_app
    USING (user_id = (SELECT current_app_user()))
    WITH CHECK (user_id = (SELECT current_app_user()));

-- A key expires 24 hours after its write. Expired keys are garbage that anyone may remove:
-- the service's sweep, running with no user, deletes them with a plain
-- `DELETE FROM idempotency_keys`. Nobody can read another user's key, expired or not:
-- PostgreSQL applies the policy above to any DELETE that reads a column (in its WHERE or
-- RETURNING clause), so such a DELETE cannot pick out another user's keys.
DROP POLICY IF EXISTS idempotency_keys_expired ON idempotency_keys;
CREATE POLICY idempotency_keys_expired ON idempotency_keys
    FOR DELETE TO todo_app
    USING (created_at <= now() - interval '24 hours');
