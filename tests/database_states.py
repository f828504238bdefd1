"""Database states the safety tests apply: unsafe ones, which the self-check (test_safety) and the
RLS probe (test_rls_probe) must refuse, and harmless ones they must accept."""

from db.safety import expected_policies

MIGRATE = "todo-api migrate"
EVERYONE_IS_ONE_USER = (
    "CREATE OR REPLACE FUNCTION current_app_user() RETURNS uuid LANGUAGE sql STABLE"
    " AS $$ SELECT '00000000-0000-0000-0000-000000000000'::uuid $$"
)
# (statement that makes a fresh migrated database unsafe, the check that must fail, its fix)
UNSAFE_TABLE_STATES = [
    ("ALTER TABLE users DISABLE ROW LEVEL SECURITY", "RLS enabled on users", MIGRATE),
    ("ALTER TABLE todos DISABLE ROW LEVEL SECURITY", "RLS enabled on todos", MIGRATE),
    ("ALTER TABLE users NO FORCE ROW LEVEL SECURITY", "RLS forced on users", MIGRATE),
    ("ALTER TABLE todos NO FORCE ROW LEVEL SECURITY", "RLS forced on todos", MIGRATE),
    ("ALTER TABLE idempotency_keys DISABLE ROW LEVEL SECURITY", "RLS enabled on idem", MIGRATE),
    ("ALTER TABLE idempotency_keys NO FORCE ROW LEVEL SECURITY", "RLS forced on idem", MIGRATE),
    ("ALTER POLICY todos_own_rows ON todos USING (true)", "policy todos_own_rows", MIGRATE),
    # Expired keys are anyone's to delete; fresh ones are not.
    (
        "ALTER POLICY idempotency_keys_expired ON idempotency_keys USING (true)",
        "policy idempotency_keys_expired",
        MIGRATE,
    ),
    ("CREATE POLICY everyone ON users USING (true)", "policy on users beyond", "drop it"),
] + [
    (f"DROP POLICY {policy} ON {table}", f"policy {policy} on {table}", MIGRATE)
    for policy, table, _ in expected_policies()
]
BEYOND = "no table privilege beyond policies.sql"
UNSAFE_ROLE_STATES = [
    # TRUNCATE ignores RLS; REFERENCES and TRIGGER are not the API's business.
    ("GRANT TRUNCATE ON todos TO todo_app", f"{BEYOND} (has TRUNCATE on todos)", "REVOKE"),
    ("GRANT REFERENCES ON users TO todo_app", f"{BEYOND} (has REFERENCES on users)", "REVOKE"),
    ("GRANT TRIGGER ON todos TO todo_app", f"{BEYOND} (has TRIGGER on todos)", "REVOKE"),
    ("GRANT UPDATE (id) ON users TO todo_app", f"{BEYOND} (has UPDATE on users)", "REVOKE"),
    ("GRANT SELECT ON alembic_version TO PUBLIC", f"{BEYOND} (has SELECT on alembic", "PUBLIC"),
    ("REVOKE DELETE ON todos FROM todo_app", "(lacks DELETE on todos)", MIGRATE),
    # A recorded answer is never changed.
    (
        "GRANT UPDATE ON idempotency_keys TO todo_app",
        f"{BEYOND} (has UPDATE on idempotency_keys)",
        "REVOKE",
    ),
    ("GRANT CREATE ON SCHEMA public TO todo_app", "cannot create objects", "REVOKE CREATE"),
    ("GRANT CREATE ON SCHEMA public TO PUBLIC", "cannot create objects", "REVOKE CREATE"),
    ("GRANT CREATE ON DATABASE {database} TO todo_app", "cannot create objects", "REVOKE"),
    (
        EVERYONE_IS_ONE_USER,
        "current_app_user() is the function policies.sql defines",
        MIGRATE,
    ),
    (
        "ALTER FUNCTION current_app_user() SECURITY DEFINER",
        "current_app_user() is the function policies.sql defines",
        MIGRATE,
    ),
]

# A relation of an extension, granted to PUBLIC as pg_stat_statements grants its views
# (plpgsql is the extension every database has), and intervals printed in ISO 8601.
HARMLESS_STATE = """
CREATE TABLE extension_stats (query text);
GRANT SELECT ON extension_stats TO PUBLIC;
ALTER EXTENSION plpgsql ADD TABLE extension_stats;
ALTER DATABASE "{database}" SET IntervalStyle = iso_8601;
"""

# docs/api.md's claim policy: restrictive, so it can only narrow the owner check.
VERIFIED_EMAIL_POLICY = """
CREATE POLICY todos_verified_email ON todos AS RESTRICTIVE FOR ALL TO todo_app
    USING (coalesce((nullif(current_setting('request.jwt.claims', true), '')::jsonb
                     ->> 'emailVerified')::boolean, false));
"""
