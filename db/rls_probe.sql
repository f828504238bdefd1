-- The RLS probe: proof, by behaviour, that this database keeps users apart.
--
--   psql "$NEON_DATABASE_URL" -v ON_ERROR_STOP=1 -f db/rls_probe.sql
--   todo-api check --deep          (the static self-check, then this probe)
--
-- Two synthetic users with fresh random ids write through todo_app, each in their own
-- context; then every cross-user read and write is attempted, and every table and view
-- todo_app can read is searched for the other user's rows. What cannot be tried without
-- touching other users' rows or running someone else's code is looked up in the catalog:
-- code that would run as another role, rules, policies, privileges.
--
-- Safe beside production traffic:
-- - One transaction, always rolled back: no row, user or key is left behind, also when a
--   check fails or the probe is cut off halfway (psql stops, and the server rolls back).
-- - It writes only its own rows, so it locks only them, plus the weak table locks any request
--   takes. lock_timeout, statement_timeout (for the whole probe) and
--   idle_in_transaction_session_timeout keep it short.
-- - It calls no function itself. The tables' triggers fire on its writes, as on a request's;
--   the views it searches run their queries, read-only.
--
-- Output: TAP, one line per check, then a summary; psql exits 3 when a check fails.
--
-- When policies.sql has restrictive policies that read claims, give the synthetic users the
-- claims they need: -v claims='{"emailVerified": true}' (todo-api check --deep --claims ...).
-- When policies.sql changes its grants or policies, change api_privileges and api_policies.

\set ON_ERROR_STOP on
\set ECHO none
\set QUIET on
\set SHOW_CONTEXT never
\timing off
\pset pager off
\pset expanded off
\pset format unaligned
\pset tuples_only on
\if :{?claims}
\else
    \set claims '{}'
\endif

BEGIN;
SET LOCAL statement_timeout = '10s';
SET LOCAL lock_timeout = '2s';
SET LOCAL idle_in_transaction_session_timeout = '5s';
SET LOCAL IntervalStyle = 'postgres';  -- policies are compared as PostgreSQL prints them
SET LOCAL search_path = public, pg_temp;
SET LOCAL application_name = 'todo-api rls probe';  -- what pg_stat_activity shows
SET LOCAL rls_probe.claims = :'claims';

DO $probe$
DECLARE
    app constant text := 'todo_app';
    user_a constant uuid := gen_random_uuid();
    user_b constant uuid := gen_random_uuid();
    table_names constant text[] := ARRAY['users', 'todos', 'idempotency_keys'];
    -- The API's table privileges and permissive policies, as policies.sql writes them.
    api_privileges constant text[] := ARRAY[
        'DELETE idempotency_keys', 'DELETE todos', 'INSERT idempotency_keys', 'INSERT todos',
        'INSERT users', 'SELECT idempotency_keys', 'SELECT todos', 'SELECT users',
        'UPDATE todos'];
    api_policies constant text[] := ARRAY[
        'idempotency_keys_expired on idempotency_keys for DELETE USING '
            '(created_at <= (now() - ''24:00:00''::interval))',
        'idempotency_keys_own_rows on idempotency_keys for ALL USING '
            '(user_id = ( SELECT current_app_user() AS current_app_user)) WITH CHECK '
            '(user_id = ( SELECT current_app_user() AS current_app_user))',
        'todos_own_rows on todos for ALL USING '
            '(user_id = ( SELECT current_app_user() AS current_app_user)) WITH CHECK '
            '(user_id = ( SELECT current_app_user() AS current_app_user))',
        'users_own_row on users for ALL USING '
            '(id = ( SELECT current_app_user() AS current_app_user)) WITH CHECK '
            '(id = ( SELECT current_app_user() AS current_app_user))'];
    -- Every table privilege there is; MAINTAIN (PostgreSQL 17) may lock a table.
    all_privileges constant text[] := ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                            'REFERENCES', 'TRIGGER']
        || CASE WHEN current_setting('server_version_num')::int >= 170000
                THEN ARRAY['MAINTAIN'] ELSE '{}' END;
    -- What the current role sees of the three tables: up to 11 ids of each, sorted.
    visible_sql constant text := $q$
        SELECT jsonb_build_object(
            'users', (SELECT coalesce(jsonb_agg(x ORDER BY x), '[]')
                      FROM (SELECT id::text AS x FROM users LIMIT 11) s),
            'todos', (SELECT coalesce(jsonb_agg(x ORDER BY x), '[]')
                      FROM (SELECT id::text AS x FROM todos LIMIT 11) s),
            'idempotency_keys', (SELECT coalesce(jsonb_agg(x ORDER BY x), '[]')
                                 FROM (SELECT key AS x FROM idempotency_keys LIMIT 11) s))
    $q$;
    nothing constant jsonb := '{"users": [], "todos": [], "idempotency_keys": []}';
    -- A note on what visible_sql saw: how many rows of each table, never the rows.
    counted_sql constant text := $q$
        SELECT 'it sees ' || coalesce(string_agg(format('%s in %s',
                   CASE WHEN jsonb_array_length(value) > 10 THEN 'over 10 rows'
                        ELSE jsonb_array_length(value) || ' row(s)' END, key), ', '), 'nothing')
        FROM jsonb_each($1) WHERE jsonb_array_length(value) > 0
    $q$;
    -- A note on how $1 differs from $2: what it has beyond ($3 ...) and lacks ($4 ...).
    difference_sql constant text := $q$
        SELECT concat_ws('; ',
            $3 || nullif(array_to_string(
                ARRAY(SELECT unnest($1) EXCEPT SELECT unnest($2) ORDER BY 1), ', '), ''),
            $4 || nullif(array_to_string(
                ARRAY(SELECT unnest($2) EXCEPT SELECT unnest($1) ORDER BY 1), ', '), ''))
    $q$;
    claims jsonb;           -- the synthetic users' own claims (-v claims)
    tables regclass[];      -- table_names, once they are known to exist
    checks jsonb := '[]';   -- {"name", "ok", "note", "skip", "warn", "bail"} per check, in order
    todo_ids text[];
    todos_of jsonb := '{}'; -- each user's two todo ids, sorted as visible_sql sorts them
    a_rows jsonb;           -- exactly what A owns, in visible_sql's shape
    first_todo uuid;
    seen jsonb;
    note text;
    own_note text;
    problems text[];        -- what a check found wrong
    changed int;
    searched int;
    leaked boolean;
    u uuid;
    searcher uuid;
    other uuid;
    table_name text;
    role_name text;
    superuser boolean;
    bypass boolean;
    this jsonb;
    attempt record;
    target record;
    failed_numbers int[];
    tap text;
BEGIN
    <<checks_block>>
    BEGIN
        claims := current_setting('rls_probe.claims')::jsonb;
        BEGIN
            PERFORM set_config('role', app, true);
            PERFORM set_config('request.jwt.claims', claims::text, true);
            checks := checks || jsonb_build_object(
                'name', format('the connecting role can switch to %s', app), 'ok', true);
        EXCEPTION WHEN OTHERS THEN
            checks := checks || jsonb_build_object(
                'name', format('the connecting role can switch to %s', app), 'ok', false,
                'note', SQLERRM, 'bail', format('every other check runs as %s', app));
            EXIT checks_block;
        END;

        -- A and B each write a users row, two todos (one done, with no description) and a key.
        -- Each text written holds the writer's id, so a copy of it anywhere names its owner.
        FOREACH u IN ARRAY ARRAY[user_a, user_b] LOOP
            todo_ids := ARRAY[gen_random_uuid()::text, gen_random_uuid()::text];
            BEGIN
                PERFORM set_config('app.user_id', u::text, true);
                INSERT INTO users (id) VALUES (u);
                INSERT INTO todos (id, user_id, title, description)
                VALUES (todo_ids[1]::uuid, u, 'rls probe ' || u, 'rls probe ' || u);
                INSERT INTO todos (id, user_id, title, is_completed)
                VALUES (todo_ids[2]::uuid, u, 'rls probe ' || u, true);
                INSERT INTO idempotency_keys (user_id, key, fingerprint, response)
                VALUES (u, 'rls-probe-' || u, 'rls probe', jsonb_build_object('probe', u));
                note := NULL;
            EXCEPTION WHEN OTHERS THEN
                note := SQLERRM;
            END;
            checks := checks || jsonb_build_object(
                'name', format('%s writes its own users row, todos and idempotency key',
                               CASE u WHEN user_a THEN 'A' ELSE 'B' END),
                'ok', note IS NULL, 'note', note,
                'bail', CASE WHEN note IS NOT NULL THEN 'the other checks need both users'' rows' END);
            EXIT checks_block WHEN note IS NOT NULL;
            todos_of := todos_of || jsonb_build_object(u, (SELECT jsonb_agg(x ORDER BY x)
                                                           FROM unnest(todo_ids) x));
        END LOOP;
        tables := table_names::regclass[];
        first_todo := todos_of -> user_a::text ->> 0;
        a_rows := jsonb_build_object('users', jsonb_build_array(user_a),
                                     'todos', todos_of -> user_a::text,
                                     'idempotency_keys', jsonb_build_array('rls-probe-' || user_a));

        -- With no user set, todo_app sees nothing at all.
        PERFORM set_config('app.user_id', '', true);
        EXECUTE visible_sql INTO seen;
        FOREACH table_name IN ARRAY table_names LOOP
            EXECUTE counted_sql USING jsonb_build_object(table_name, seen -> table_name) INTO note;
            checks := checks || jsonb_build_object(
                'name', format('with no user set, %s sees no rows in %s', app, table_name),
                'ok', seen -> table_name = '[]', 'note', note);
        END LOOP;

        -- A sees exactly its own rows.
        PERFORM set_config('app.user_id', user_a::text, true);
        EXECUTE visible_sql INTO seen;
        FOREACH table_name IN ARRAY table_names LOOP
            EXECUTE counted_sql USING jsonb_build_object(table_name, seen -> table_name) INTO note;
            checks := checks || jsonb_build_object(
                'name', format('A sees exactly its own rows in %s', table_name),
                'ok', seen -> table_name = a_rows -> table_name,
                'note', format('%s; it owns %s', note, jsonb_array_length(a_rows -> table_name)));
        END LOOP;

        -- A cannot write B's rows, nor write rows for B. Each attempt must be refused or change
        -- nothing; one that changes something is undone at once.
        FOR attempt IN
            SELECT * FROM (VALUES
                ('A cannot create a todo for B',
                 format('INSERT INTO todos (user_id, title) VALUES (%L, %L)',
                        user_b, 'rls probe ' || user_b)),
                ('A cannot create a users row for another user',
                 format('INSERT INTO users (id) VALUES (%L)', gen_random_uuid())),
                ('A cannot record an idempotency key for B',
                 format('INSERT INTO idempotency_keys (user_id, key, fingerprint, response)'
                        ' VALUES (%L, %L, %L, %L)', user_b, 'rls-probe-a-for-' || user_b, 'x', '{}')),
                ('A cannot give its todo to B',
                 format('UPDATE todos SET user_id = %L WHERE id = %L', user_b, first_todo)),
                ('A cannot change B''s todos',
                 format('UPDATE todos SET title = %L WHERE user_id = %L', 'changed by A', user_b)),
                ('A cannot delete B''s todos',
                 format('DELETE FROM todos WHERE user_id = %L', user_b)),
                ('A cannot delete B''s idempotency keys',
                 format('DELETE FROM idempotency_keys WHERE user_id = %L', user_b))
            ) AS t(name, statement)
        LOOP
            BEGIN
                EXECUTE attempt.statement;
                GET DIAGNOSTICS changed = ROW_COUNT;
                IF changed > 0 THEN
                    RAISE SQLSTATE 'RP001' USING MESSAGE = format('it changed %s row(s)', changed);
                END IF;
                note := NULL;
            EXCEPTION
                WHEN insufficient_privilege THEN note := NULL;  -- refused by RLS or by a grant
                WHEN OTHERS THEN note := SQLERRM;
            END;
            checks := checks || jsonb_build_object(
                'name', attempt.name, 'ok', note IS NULL, 'note', note);
        END LOOP;

        -- ...while it can change and delete its own (undone afterwards), so the refusals above
        -- are the policies at work, not a broken table.
        BEGIN
            note := 'updating its todo';
            UPDATE todos SET title = 'changed by A' WHERE id = first_todo;
            GET DIAGNOSTICS changed = ROW_COUNT;
            IF changed = 1 THEN
                note := 'deleting its todo';
                DELETE FROM todos WHERE id = first_todo;
                GET DIAGNOSTICS changed = ROW_COUNT;
            END IF;
            IF changed = 1 THEN
                note := 'deleting its idempotency key';
                DELETE FROM idempotency_keys WHERE user_id = user_a;
                GET DIAGNOSTICS changed = ROW_COUNT;
            END IF;
            IF changed = 1 THEN
                note := NULL;
            ELSE
                note := note || format(' changed %s rows, not 1', changed);
            END IF;
            RAISE SQLSTATE 'RP002';  -- undo
        EXCEPTION
            WHEN SQLSTATE 'RP002' THEN NULL;
            WHEN OTHERS THEN note := note || ': ' || SQLERRM;
        END;
        checks := checks || jsonb_build_object(
            'name', 'A can change and delete its own todo, and delete its own key',
            'ok', note IS NULL, 'note', note);

        -- Claims cannot widen access: policies bind to app.user_id, whatever the token says.
        PERFORM set_config(
            'request.jwt.claims',
            (claims || jsonb_build_object('sub', user_b, 'user_id', user_b, 'role', app))::text,
            true);
        EXECUTE visible_sql INTO seen;
        EXECUTE counted_sql USING seen INTO note;
        EXECUTE counted_sql USING a_rows INTO own_note;
        checks := checks || jsonb_build_object(
            'name', 'claims naming B do not widen what A sees',
            'ok', seen = a_rows, 'note', note || '; ' || replace(own_note, 'it sees', 'it owns'));
        PERFORM set_config('app.user_id', '', true);
        EXECUTE visible_sql INTO seen;
        EXECUTE counted_sql USING seen INTO note;
        checks := checks || jsonb_build_object(
            'name', 'claims naming B show nothing when no user is set',
            'ok', seen = nothing, 'note', note);
        PERFORM set_config('request.jwt.claims', claims::text, true);

        -- A pooled connection after its transaction ended: the context is reset.
        PERFORM set_config('app.user_id', user_a::text, true);
        RESET app.user_id;
        EXECUTE visible_sql INTO seen;
        EXECUTE counted_sql USING seen INTO note;
        checks := checks || jsonb_build_object(
            'name', 'after A''s context is reset, the same session sees no rows',
            'ok', seen = nothing, 'note', note);

        -- Without the switch to todo_app, the connecting role and the tables' owner see nothing
        -- either: RLS is forced, and the policies name only todo_app (and its members, who with
        -- no user set see nothing).
        FOR role_name, superuser, bypass IN
            SELECT r.rolname, r.rolsuper, r.rolbypassrls FROM pg_roles r
            WHERE r.rolname = session_user
               OR r.oid IN (SELECT relowner FROM pg_class WHERE oid = ANY(tables))
            ORDER BY r.rolname
        LOOP
            this := jsonb_build_object(
                'name', format('%s, without the switch to %s and with no user set, sees no rows',
                               role_name, app),
                'ok', true);
            IF superuser THEN
                this := this || jsonb_build_object(
                    'skip', 'a superuser sees every row',
                    'warn', format('%s is a superuser: never serve as one', role_name));
            ELSIF bypass THEN
                this := this || jsonb_build_object(
                    'skip', 'it has BYPASSRLS (Neon''s Console roles do): only the switch restrains it');
            ELSE
                BEGIN
                    PERFORM set_config('role', role_name, true);
                    BEGIN
                        EXECUTE visible_sql INTO seen;
                    EXCEPTION WHEN insufficient_privilege THEN
                        seen := nothing;  -- it may not read the tables at all
                    END;
                    EXECUTE counted_sql USING seen INTO note;
                    this := this || jsonb_build_object('ok', seen = nothing, 'note', note);
                EXCEPTION WHEN insufficient_privilege THEN
                    this := this || jsonb_build_object(
                        'skip', format('%s cannot switch to it to look', session_user));
                END;
                PERFORM set_config('role', app, true);
            END IF;
            checks := checks || this;
        END LOOP;

        -- Everything todo_app can read, searched by each user for the other's user id and todo
        -- ids: a trigger, rule or view that copies rows, in either direction, shows up here.
        -- Objects of extensions are theirs to keep; built-in ones have OIDs below 16384.
        PERFORM set_config('transaction_read_only', 'on', true);
        FOREACH searcher IN ARRAY ARRAY[user_a, user_b] LOOP
            other := CASE searcher WHEN user_a THEN user_b ELSE user_a END;
            PERFORM set_config('app.user_id', searcher::text, true);
            problems := '{}';
            searched := 0;
            FOR target IN
                SELECT c.oid::regclass::text AS name,
                       format('SELECT EXISTS (SELECT FROM %s WHERE ROW(%s)::text ~ %L)',
                              c.oid::regclass,
                              string_agg(quote_ident(att.attname), ', ' ORDER BY att.attnum),
                              concat_ws('|', other, todos_of -> other::text ->> 0,
                                        todos_of -> other::text ->> 1)) AS query
                FROM pg_class c
                JOIN pg_attribute att
                  ON att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped
                WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                  AND c.relpersistence <> 't'
                  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                  AND d.objid = c.oid AND d.deptype = 'e')
                  AND has_column_privilege(app, c.oid, att.attnum, 'SELECT')
                GROUP BY c.oid
                ORDER BY 1
            LOOP
                searched := searched + 1;
                BEGIN
                    EXECUTE target.query INTO leaked;
                    IF leaked THEN
                        problems := problems || format('%s''s rows are in %s',
                            CASE other WHEN user_a THEN 'A' ELSE 'B' END, target.name);
                    END IF;
                EXCEPTION
                    WHEN insufficient_privilege THEN NULL;  -- it returns nothing
                    WHEN OTHERS THEN problems := problems || format(
                        '%s could not be searched: %s', target.name, SQLERRM);
                END;
            END LOOP;
            checks := checks || jsonb_build_object(
                'name', format('%s finds none of %s''s rows in any relation %s can read (%s searched)',
                               CASE searcher WHEN user_a THEN 'A' ELSE 'B' END,
                               CASE other WHEN user_a THEN 'A' ELSE 'B' END, app, searched),
                'ok', problems = '{}', 'note', array_to_string(problems, '; '));
        END LOOP;

        -- Code that would run as another role for todo_app: a SECURITY DEFINER function, or
        -- one that switches role, that it can call or that a trigger on its tables runs.
        SELECT coalesce(array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text),
                        '{}') INTO problems
        FROM pg_proc p
        WHERE p.oid >= 16384
          AND (p.prosecdef
               OR EXISTS (SELECT FROM unnest(p.proconfig) setting
                          WHERE setting ~* '^(role|session_authorization)=')
               OR p.prosrc ~* '(set|reset)\s+(local\s+|session\s+)?(role|session\s+authorization)'
               OR p.prosrc ~* 'set_config\s*\(\s*''(role|session_authorization)''')
          AND (has_function_privilege(app, p.oid, 'EXECUTE')
               OR p.oid IN (SELECT tgfoid FROM pg_trigger
                            WHERE tgrelid = ANY(tables) AND NOT tgisinternal))
          AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                          AND d.objid = p.oid AND d.deptype = 'e');
        checks := checks || jsonb_build_object(
            'name', format('no function %s can call, nor any trigger on its tables, runs as another'
                           ' role (SECURITY DEFINER, or SET ROLE)', app),
            'ok', problems = '{}', 'note', 'these do: ' || array_to_string(problems, ', '));

        -- A rule's actions run as the table's owner.
        SELECT coalesce(array_agg(format('%s on %s', rulename, tablename) ORDER BY rulename), '{}')
        INTO problems
        FROM pg_rules WHERE schemaname = 'public' AND tablename = ANY(table_names);
        checks := checks || jsonb_build_object(
            'name', 'no rule rewrites statements on users, todos or idempotency_keys',
            'ok', problems = '{}', 'note', 'found ' || array_to_string(problems, ', '));

        -- Permissive policies add up: one more for UPDATE or DELETE, or a wider sweep, lets a
        -- statement with no WHERE reach other users' rows, which the probe cannot try without
        -- locking them. So they must be exactly the API's.
        SELECT coalesce(array_agg(policy ORDER BY policy), '{}') INTO problems
        FROM (
            SELECT concat_ws(' ', format('%s on %s for %s', policyname, tablename, cmd),
                             'USING ' || qual, 'WITH CHECK ' || with_check) AS policy
            FROM pg_policies
            WHERE schemaname = 'public' AND tablename = ANY(table_names)
              AND permissive = 'PERMISSIVE'
              AND EXISTS (SELECT FROM unnest(roles) r
                          WHERE CASE WHEN r = 'public' THEN true
                                     ELSE pg_has_role(app, r, 'MEMBER') END)
        ) s;
        EXECUTE difference_sql USING problems, api_policies, 'beyond them: ', 'missing: '
            INTO note;
        checks := checks || jsonb_build_object(
            'name', format('the permissive policies for %s are exactly the API''s', app),
            'ok', problems = api_policies, 'note', note);

        -- TRUNCATE ignores RLS, and taking its lock would stop production: asked, not tried.
        SELECT coalesce(array_agg(held ORDER BY held), '{}') INTO problems
        FROM (
            SELECT format('%s %s', p.privilege, c.oid::regclass) AS held
            FROM pg_class c
            CROSS JOIN unnest(all_privileges) AS p(privilege)
            WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
              AND c.relpersistence <> 't'
              AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                              AND d.objid = c.oid AND d.deptype = 'e')
              AND CASE WHEN p.privilege IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                       THEN has_any_column_privilege(app, c.oid, p.privilege)
                       ELSE has_table_privilege(app, c.oid, p.privilege) END
        ) s;
        EXECUTE difference_sql USING problems, api_privileges, 'beyond them it holds ', 'it lacks '
            INTO note;
        checks := checks || jsonb_build_object(
            'name', format('%s holds exactly the table privileges the API uses', app),
            'ok', problems = api_privileges, 'note', note);

        SELECT coalesce(array_agg(place ORDER BY place), '{}') INTO problems
        FROM (
            SELECT 'database ' || current_database() AS place
            WHERE has_database_privilege(app, current_database(), 'CREATE')
            UNION ALL
            SELECT 'schema ' || nspname FROM pg_namespace
            WHERE (oid >= 16384 OR nspname = 'public')
              AND has_schema_privilege(app, oid, 'CREATE')
        ) s;
        checks := checks || jsonb_build_object(
            'name', format('%s cannot create objects', app),
            'ok', problems = '{}', 'note', 'it can create in ' || array_to_string(problems, ', '));

        SELECT coalesce(array_agg(DISTINCT roleid::regrole::text), '{}') INTO problems
        FROM pg_auth_members WHERE member = app::regrole;
        checks := checks || jsonb_build_object(
            'name', format('%s is a member of no other role', app),
            'ok', problems = '{}', 'note', 'it is a member of ' || array_to_string(problems, ', '));
    -- Whatever stops it (a timeout too), the TAP lines are printed.
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        checks := checks || jsonb_build_object(
            'name', 'the probe runs to its end', 'ok', false, 'note', SQLERRM,
            'bail', 'an unexpected error stopped it');
    END checks_block;

    -- TAP: the plan, one line per check with what a failed one found, and a summary.
    SELECT coalesce(array_agg(n ORDER BY n), '{}') INTO failed_numbers
    FROM jsonb_array_elements(checks) WITH ORDINALITY AS e(c, n)
    WHERE NOT (c ->> 'ok')::boolean;
    SELECT string_agg(line, E'\n' ORDER BY n, part) INTO tap
    FROM (
        SELECT 0 AS n, 0 AS part, '1..' || jsonb_array_length(checks) AS line
        UNION ALL
        SELECT n, 0, format('%s %s - %s%s',
                            CASE WHEN (c ->> 'ok')::boolean THEN 'ok' ELSE 'not ok' END,
                            n, c ->> 'name',
                            CASE WHEN c ? 'skip' THEN ' # SKIP ' || (c ->> 'skip') ELSE '' END)
        FROM jsonb_array_elements(checks) WITH ORDINALITY AS e(c, n)
        UNION ALL
        SELECT n, 1, '#   ' || (c ->> 'note')
        FROM jsonb_array_elements(checks) WITH ORDINALITY AS e(c, n)
        WHERE NOT (c ->> 'ok')::boolean AND c ->> 'note' IS NOT NULL
        UNION ALL
        SELECT n, 2, '# WARNING: ' || (c ->> 'warn')
        FROM jsonb_array_elements(checks) WITH ORDINALITY AS e(c, n)
        WHERE c ? 'warn'
        UNION ALL
        SELECT n, 3, 'Bail out! ' || (c ->> 'bail')
        FROM jsonb_array_elements(checks) WITH ORDINALITY AS e(c, n)
        WHERE c ->> 'bail' IS NOT NULL
        UNION ALL
        SELECT jsonb_array_length(checks) + 1, 0,
               CASE WHEN failed_numbers = '{}'
                    THEN format('# all %s checks passed', jsonb_array_length(checks))
                    ELSE format('# FAILED %s of %s checks: %s', cardinality(failed_numbers),
                                jsonb_array_length(checks), array_to_string(failed_numbers, ', '))
               END
    ) lines;
    PERFORM set_config('role', 'none', true);
    PERFORM set_config('rls_probe.tap', tap, true);
    PERFORM set_config('rls_probe.failed', cardinality(failed_numbers)::text, true);
END
$probe$;

SELECT line FROM unnest(string_to_array(current_setting('rls_probe.tap'), E'\n'))
    WITH ORDINALITY AS t(line, n) ORDER BY n;
DO $$
BEGIN
    IF current_setting('rls_probe.failed') <> '0' THEN
        RAISE EXCEPTION 'RLS probe: % check(s) failed', current_setting('rls_probe.failed');
    END IF;
END
$$;
ROLLBACK;
