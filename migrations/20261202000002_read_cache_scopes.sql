-- The read cache's invalidation, per tenant instead of global (issue 18).
--
-- Before, every transaction that could change a cached answer bumped one global counter row as
-- it committed: every write of every tenant queued on that row, and any write anywhere emptied
-- every replica's cache. Now each *scope* has its own counter row, bumped only by the writes
-- that touch it. A scope is one row of what cached answers are made of, `kind << 56 | id`:
--
--   kind 1, users.id            a user's row (token, admin flag);
--   kind 2, service_accounts.id a service account's row;
--   kind 3, instances.id        an instance's row and its shares;
--   kind 4, projects.id         a project's row (its binding);
--   kind 5, definitions.id      a definition's row (an instance's native dimensions);
--   0                           what every tenant shares (API standards).
--
-- So writes to different instances lock different counter rows, even within one tenant.
--
-- Each cached answer records the values of the scopes it depends on, read in the same snapshot
-- as its data. Each row also records the transaction that last changed it (`changed_xid`), so
-- that a replica can ask "which scopes changed since I last looked?" with an index range: every
-- transaction older than a snapshot's xmin has finished, so a reader that remembers the xmin of
-- its previous look and asks for `changed_xid >= that xmin` misses no commit, in any order
-- (src/store/scope_probe.rs explains the proof). Writers of different tenants lock different rows.
CREATE TABLE read_cache_scopes (
    scope       bigint PRIMARY KEY,
    value       bigint NOT NULL,
    changed_xid xid8   NOT NULL
);
CREATE INDEX read_cache_scopes_changed ON read_cache_scopes (changed_xid);

-- Bumps one scope for the current transaction (NULL: nothing to bump).
CREATE FUNCTION bump_read_cache_scope(target bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF target IS NOT NULL THEN
        INSERT INTO read_cache_scopes AS s (scope, value, changed_xid)
        VALUES (target, 1, pg_current_xact_id())
        ON CONFLICT (scope) DO UPDATE SET value = s.value + 1, changed_xid = EXCLUDED.changed_xid;
    END IF;
END $$;

-- The scope of row `id` of kind `kind` (see above); src/store/read_cache.rs mirrors it.
CREATE FUNCTION read_cache_scope(kind integer, id bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT (kind::bigint << 56) | id
$$;

-- The value of a scope as a cached answer records it (0 until its first change).
CREATE FUNCTION read_cache_value(target bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT value FROM read_cache_scopes WHERE scope = target), 0)
$$;

-- One trigger function per table, naming the scope a row belongs to. Deferred constraint
-- triggers run them as the transaction commits, so a scope row stays locked only for the commit.
-- The kind is the trigger's argument; the row is OLD (an UPDATE never changes an id).
CREATE FUNCTION bump_scope_of_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bump_read_cache_scope(read_cache_scope(TG_ARGV[0]::integer, OLD.id));
    RETURN NULL;
END $$;
-- A share belongs to its instance.
CREATE FUNCTION bump_scope_of_share() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bump_read_cache_scope(read_cache_scope(3,
        CASE WHEN TG_OP = 'DELETE' THEN OLD.instance_id ELSE NEW.instance_id END));
    RETURN NULL;
END $$;
CREATE FUNCTION bump_shared_scope() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM bump_read_cache_scope(0); RETURN NULL; END $$;

DROP TRIGGER users_bump_read_cache_epoch ON users;
DROP TRIGGER instances_bump_read_cache_epoch ON instances;
DROP TRIGGER shares_bump_read_cache_epoch ON shares;
DROP TRIGGER api_standards_bump_read_cache_epoch ON api_standards;
DROP TRIGGER definitions_bump_read_cache_epoch ON definitions;
DROP TRIGGER projects_bump_read_cache_epoch ON projects;
DROP TRIGGER service_accounts_bump_read_cache_epoch ON service_accounts;
DROP FUNCTION bump_read_cache_epoch();
DROP TABLE read_cache_epoch;

-- Inserting a user, an instance, a project or a definition changes no cached answer (only
-- answers that found something are cached), so inserts bump only for shares.
CREATE CONSTRAINT TRIGGER users_bump_read_cache_scope
    AFTER UPDATE OR DELETE ON users DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_scope_of_row(1);
CREATE CONSTRAINT TRIGGER service_accounts_bump_read_cache_scope
    AFTER UPDATE OR DELETE ON service_accounts DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_scope_of_row(2);
CREATE CONSTRAINT TRIGGER instances_bump_read_cache_scope
    AFTER UPDATE OR DELETE ON instances DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_scope_of_row(3);
CREATE CONSTRAINT TRIGGER projects_bump_read_cache_scope
    AFTER UPDATE OR DELETE ON projects DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_scope_of_row(4);
CREATE CONSTRAINT TRIGGER definitions_bump_read_cache_scope
    AFTER UPDATE OR DELETE ON definitions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_scope_of_row(5);
CREATE CONSTRAINT TRIGGER shares_bump_read_cache_scope
    AFTER INSERT OR UPDATE OR DELETE ON shares DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_scope_of_share();
CREATE CONSTRAINT TRIGGER api_standards_bump_read_cache_scope
    AFTER UPDATE OR DELETE ON api_standards DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_shared_scope();
