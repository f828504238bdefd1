-- GET /api/v1/todos/{id}, as one pipeline straight to PostgreSQL (bench/__main__.py passes the -D variables).
\set n random(1, :todos)
\set u (:n - 1) % :users + 1
\startpipeline
BEGIN;
SELECT set_config('role', 'todo_app', true), set_config('app.user_id', :user_prefix || lpad(:u, 12, '0'), true), set_config('statement_timeout', '5000', true);
SELECT id, user_id, title, description, is_completed, created_at, updated_at, version FROM todos WHERE id = (:todo_prefix || lpad(:n, 12, '0'))::uuid AND user_id = (:user_prefix || lpad(:u, 12, '0'))::uuid;
COMMIT;
\endpipeline
