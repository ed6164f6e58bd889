-- UpdateInstance's statements, as the service sends them for
-- `UpdateInstance(users/owner-0/instances/i{client}, description, update_mask: description)`
-- (src/store/instances/write.rs): a caller's first update of an instance reads it (no lock, no
-- transaction); from then on it starts from the version it last wrote (update_hints.rs). Then
-- one statement writes the row, only if it is still that version, with the API standard looked
-- up inside it, and the audit event; its commit fires the read cache scope bump of migration
-- read_cache_scopes. Updates that arrive together share that statement (group commit), which
-- pgbench, one transaction per client, does not do: this is the ceiling of updates sent alone.
-- The owner's own update: no share to check.
-- Each pgbench client updates an instance of its own, as each loadgen stream does.
-- Run by bench/run.sh: pgbench -n -M prepared -D owner=ID -D hint_iid=0 -f bench/update_instance.sql
\set n random(1, 1000000000)
\if :hint_iid = 0
SELECT (SELECT role FROM shares WHERE instance_id = i.id AND grantee_id = :owner) AS shared_role,
       i.id AS iid, i.uid::text AS uid, u.handle AS owner, i.handle,
       (SELECT du.handle FROM definitions d JOIN users du ON du.id = d.owner_id
        WHERE d.id = i.definition_id) AS definition_owner,
       (SELECT d.handle FROM definitions d WHERE d.id = i.definition_id) AS definition_handle,
       i.endpoint, (SELECT st.handle FROM api_standards st WHERE st.id = i.api_standard_id) AS api_standard,
       i.model, i.dimensions, i.context_limit, i.description, (i.api_key_ciphertext IS NOT NULL) AS has_api_key,
       i.allow_credential_release, i.revision, i.create_time, i.update_time,
       i.last_test_time, i.last_test_code, i.last_test_message, i.last_test_dimensions,
       i.last_test_latency_ms
FROM instances i
JOIN users u ON u.id = i.owner_id
WHERE u.handle = 'owner-0' AND i.handle = 'i' || :client_id \gset hint_
\endif
-- The write: the statement of src/store/instances/update_batches.rs (UPDATE_BATCH), which the
-- service sends for several updates at once when they arrive together; here for one, as an
-- update alone sends it.
WITH input AS (
  SELECT t.*
  FROM (SELECT ARRAY[:hint_iid]::int8[] AS c1, ARRAY[:hint_revision]::int8[] AS c2,
               ARRAY['https://api.openai.com/v1/embeddings']::text[] AS c3, ARRAY['openai']::text[] AS c4,
               ARRAY['text-embedding-3-small']::text[] AS c5, ARRAY[1536]::int4[] AS c6,
               ARRAY[8191]::int4[] AS c7, ARRAY['updated ' || :n]::text[] AS c8, ARRAY[false]::bool[] AS c9,
               ARRAY[false]::bool[] AS c10, ARRAY[NULL]::bytea[] AS c11, ARRAY[NULL]::text[] AS c12,
               ARRAY[NULL]::int8[] AS c13, ARRAY[NULL]::text[] AS c14, ARRAY['users/owner-0']::text[] AS c15,
               ARRAY['/llmregistry.v1.LlmInstanceService/UpdateInstance']::text[] AS c16,
               ARRAY['users/owner-0/instances/i' || :client_id]::text[] AS c17,
               ARRAY['owner-0']::text[] AS c18, ARRAY['']::text[] AS c19, ARRAY[NULL]::text[] AS c20
        OFFSET 0) AS batch,
       unnest(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20)
         WITH ORDINALITY AS t (id, read_revision, endpoint, standard, model, dimensions, context_limit,
                               description, allow_release, key_changes, ciphertext, key_id, share_grantee,
                               share_role, audit_caller, audit_method, resource, resource_owner, detail,
                               audit_subject, position)),
updated AS (
  UPDATE instances i SET endpoint = input.endpoint,
    api_standard_id = (SELECT id FROM api_standards WHERE handle = input.standard),
    model = input.model, dimensions = input.dimensions, context_limit = input.context_limit,
    description = input.description, allow_credential_release = input.allow_release,
    api_key_ciphertext = CASE WHEN input.key_changes THEN input.ciphertext ELSE i.api_key_ciphertext END,
    api_key_key_id = CASE WHEN input.key_changes THEN input.key_id ELSE i.api_key_key_id END,
    revision = i.revision + 1, update_time = clock_timestamp()
  FROM input
  WHERE i.id = input.id AND i.revision = input.read_revision
    AND (input.share_role IS NULL
         OR (SELECT role FROM shares WHERE instance_id = input.id AND grantee_id = input.share_grantee)
            = input.share_role)
  RETURNING input.position, i.id AS iid, i.revision, i.update_time, i.last_test_time, i.last_test_code,
    i.last_test_message, i.last_test_dimensions, i.last_test_latency_ms),
audited AS (
  INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail, subject)
  SELECT r.audit_caller, r.audit_method, r.resource, r.resource_owner, 'OK', r.detail, r.audit_subject
  FROM updated JOIN input r USING (position))
SELECT iid, revision FROM updated \gset hint_
