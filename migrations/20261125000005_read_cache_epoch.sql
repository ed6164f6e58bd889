-- The read cache's epoch: a counter that every transaction able to change a cached answer bumps
-- as it commits. Replicas cache who a token belongs to and the GetInstance answers, each tagged
-- with the epoch read in the same snapshot as the data; before answering from the cache they read
-- the epoch afresh (one read shared by all the calls waiting at that moment) and drop everything
-- when it moved. So a change committed anywhere before a call arrives is never hidden by a cache,
-- on any replica (see src/store/read_cache.rs).
CREATE TABLE read_cache_epoch (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    value     bigint  NOT NULL
);
INSERT INTO read_cache_epoch (value) VALUES (0);

-- Bumps the epoch once per transaction. Called from deferred constraint triggers, so it runs as
-- the transaction commits and the epoch row stays locked only for the commit itself; writers
-- that bump queue on that row, which makes the epoch grow in commit order.
CREATE FUNCTION bump_read_cache_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('llm_registry.read_cache_epoch_bumped', true) IS DISTINCT FROM 'yes' THEN
        UPDATE read_cache_epoch SET value = value + 1;
        PERFORM set_config('llm_registry.read_cache_epoch_bumped', 'yes', true);
    END IF;
    RETURN NULL;
END $$;

-- What a cached answer is made of: a user's token, handle and admin flag; an instance's columns;
-- the shares that give a role. Inserting a user or an instance changes no cached answer (only
-- answers that found something are cached), so inserts bump only for shares.
CREATE CONSTRAINT TRIGGER users_bump_read_cache_epoch
    AFTER UPDATE OR DELETE ON users DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_read_cache_epoch();
CREATE CONSTRAINT TRIGGER instances_bump_read_cache_epoch
    AFTER UPDATE OR DELETE ON instances DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_read_cache_epoch();
CREATE CONSTRAINT TRIGGER shares_bump_read_cache_epoch
    AFTER INSERT OR UPDATE OR DELETE ON shares DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_read_cache_epoch();
