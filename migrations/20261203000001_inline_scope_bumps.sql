-- The read cache's scope bumps (migration read_cache_scopes), one statement each (issue 18).
--
-- Every UPDATE or DELETE of a user, instance, project, definition, share or API standard runs
-- one of these trigger functions as it commits. Each called bump_read_cache_scope, which called
-- read_cache_scope: two more PL/pgSQL and SQL function calls per changed row. Measured with
-- pgbench (32 clients, an UPDATE of one instance), the trigger took about a quarter of the
-- statement's cost, and the nested calls about half of that. Same rows, same values: the scope
-- is still `kind << 56 | id`, the counter still goes up by one and records the transaction.
CREATE OR REPLACE FUNCTION bump_scope_of_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO read_cache_scopes AS s (scope, value, changed_xid)
    VALUES ((TG_ARGV[0]::bigint << 56) | OLD.id, 1, pg_current_xact_id())
    ON CONFLICT (scope) DO UPDATE SET value = s.value + 1, changed_xid = EXCLUDED.changed_xid;
    RETURN NULL;
END $$;

-- A share belongs to its instance (kind 3).
CREATE OR REPLACE FUNCTION bump_scope_of_share() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO read_cache_scopes AS s (scope, value, changed_xid)
    VALUES ((3::bigint << 56)
            | CASE WHEN TG_OP = 'DELETE' THEN OLD.instance_id ELSE NEW.instance_id END,
            1, pg_current_xact_id())
    ON CONFLICT (scope) DO UPDATE SET value = s.value + 1, changed_xid = EXCLUDED.changed_xid;
    RETURN NULL;
END $$;

-- What every tenant shares (scope 0).
CREATE OR REPLACE FUNCTION bump_shared_scope() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO read_cache_scopes AS s (scope, value, changed_xid)
    VALUES (0, 1, pg_current_xact_id())
    ON CONFLICT (scope) DO UPDATE SET value = s.value + 1, changed_xid = EXCLUDED.changed_xid;
    RETURN NULL;
END $$;
