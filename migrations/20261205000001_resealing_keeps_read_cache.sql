-- Re-sealing a stored key under another master key (`rotate-keys`) changes no answer the read
-- cache holds (issue 29): GetInstance shows no key, and a cached Embed target keeps the old
-- ciphertext, which still opens to the same key with the ring the process started with (a ring
-- must hold every key the database uses when a process starts, and a ring never changes while
-- it runs). Bumping each re-sealed instance's scope, as every other UPDATE does, made each probe
-- round see a thousand changes per rotation batch and drop the whole cache, on every replica,
-- for the length of the rotation (GetInstance's p99 went from 3.6 ms to 85 ms at a million
-- instances).
--
-- So the rotation says what it is doing (`SET LOCAL llm_registry.resealing = 'on'`, in its own
-- transactions only) and the instances' bump skips those rows. A row trigger's WHEN is
-- evaluated as the row changes, in that transaction, also for a deferred constraint trigger.
DROP TRIGGER instances_bump_read_cache_scope ON instances;
CREATE CONSTRAINT TRIGGER instances_bump_read_cache_scope
    AFTER UPDATE OR DELETE ON instances DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (current_setting('llm_registry.resealing', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION bump_scope_of_row(3);
