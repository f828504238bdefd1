-- POST /api/v1/todos, as one pipeline straight to PostgreSQL (bench/__main__.py passes the -D variables).
\set n random(1, :todos)
\set u (:n - 1) % :users + 1
\startpipeline
BEGIN;
SELECT set_config('role', 'todo_app', true), set_config('app.user_id', :user_prefix || lpad(:u, 12, '0'), true), set_config('statement_timeout', '5000', true);
INSERT INTO users (id) VALUES ((:user_prefix || lpad(:u, 12, '0'))::uuid) ON CONFLICT (id) DO NOTHING;
INSERT INTO todos (user_id, title, description, is_completed) VALUES ((:user_prefix || lpad(:u, 12, '0'))::uuid, 'Benchmark', 'under load', false) RETURNING id, user_id, title, description, is_completed, created_at, updated_at;
COMMIT;
\endpipeline
