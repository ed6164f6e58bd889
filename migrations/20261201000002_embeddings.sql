-- Using an instance through the registry (EmbeddingService): the wire format of each standard's
-- embedding call, the outcome of an instance's last test, and the shared per-instance rate window.

-- 0 = unspecified (no embedding call known), 1 = OpenAI embeddings, 2 = Cohere v2 embed,
-- 3 = Gemini embedContent / batchEmbedContents; the numbers of the proto enum EmbeddingProtocol.
ALTER TABLE api_standards
    ADD COLUMN protocol smallint NOT NULL DEFAULT 0 CHECK (protocol BETWEEN 0 AND 3);
UPDATE api_standards SET protocol = 1 WHERE handle = 'openai';
UPDATE api_standards SET protocol = 2 WHERE handle = 'cohere';
UPDATE api_standards SET protocol = 3 WHERE handle = 'gemini';

-- Output-only: written by TestInstance without changing the instance's revision (a test is not
-- an edit, so it does not invalidate the etag a writer holds). All NULL until the first test.
ALTER TABLE instances
    ADD COLUMN last_test_time         timestamptz,
    ADD COLUMN last_test_code         text,
    ADD COLUMN last_test_message      text,
    ADD COLUMN last_test_dimensions   integer,
    ADD COLUMN last_test_latency_ms   bigint;

-- Per-instance request counts in fixed one-minute windows, shared by every replica, for the
-- PROVIDER_REQUESTS_PER_MINUTE limit. One row per instance that was ever used; the window moves
-- forward in place, so the table never grows beyond the number of instances.
CREATE TABLE provider_rate_windows (
    instance_id  bigint      PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    used         integer     NOT NULL
);

-- The read cache also keeps what an Embed needs of an instance (see src/store/read_cache.rs),
-- which depends on the instance's API standard (header, scheme, protocol), on the definition it
-- came from (its dimensions) and, for a project target, on the project's binding: changes to
-- those bump the epoch too. Creating one cannot change a cached answer, so inserts do not.
CREATE CONSTRAINT TRIGGER api_standards_bump_read_cache_epoch
    AFTER UPDATE OR DELETE ON api_standards DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_read_cache_epoch();
CREATE CONSTRAINT TRIGGER definitions_bump_read_cache_epoch
    AFTER UPDATE OR DELETE ON definitions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_read_cache_epoch();
CREATE CONSTRAINT TRIGGER projects_bump_read_cache_epoch
    AFTER UPDATE OR DELETE ON projects DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_read_cache_epoch();
