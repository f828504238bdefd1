-- PATCH /api/v1/todos/{id} without If-Match or Idempotency-Key, as one pipeline straight to
-- PostgreSQL: the statements of db/todos.py and db/idempotency.py (bench/__main__.py passes
-- the -D variables).
\set n random(1, :todos)
\set u (:n - 1) % :users + 1
\startpipeline
BEGIN;
SELECT set_config('role', 'todo_app', true), set_config('app.user_id', :user_prefix || lpad(:u, 12, '0'), true), set_config('statement_timeout', '5000', true);
WITH replay AS (
    SELECT fingerprint, response FROM idempotency_keys WHERE user_id = (:user_prefix || lpad(:u, 12, '0'))::uuid AND key = NULL
), written AS (
    UPDATE todos SET is_completed = true WHERE id = (:todo_prefix || lpad(:n, 12, '0'))::uuid AND user_id = (:user_prefix || lpad(:u, 12, '0'))::uuid AND NOT EXISTS (SELECT FROM replay) RETURNING id, user_id, title, description, is_completed, created_at, updated_at, version
), recorded AS (
    INSERT INTO idempotency_keys (user_id, key, fingerprint, response)
    SELECT user_id, NULL, NULL, to_jsonb(written) FROM written WHERE NULL IS NOT NULL
)
SELECT (SELECT to_jsonb(written) FROM written) AS written,
       (SELECT to_jsonb(replay) FROM replay) AS replay,
       EXISTS (SELECT FROM todos WHERE id = (:todo_prefix || lpad(:n, 12, '0'))::uuid AND user_id = (:user_prefix || lpad(:u, 12, '0'))::uuid) AS found;
COMMIT;
\endpipeline
