-- UpdateInstance's statements, as the service sends them for
-- `UpdateInstance(users/owner-0/instances/i{client}, description, update_mask: description)`
-- (src/store/instances/write.rs): a caller's first update of an instance reads it (no lock, no
-- transaction); from then on it starts from the version it last wrote (update_hints.rs). Then
-- one statement writes the row, only if it is still that version, with the API standard looked
-- up inside it, and the audit event; its commit fires the read cache scope bump of migration
-- read_cache_scopes. The owner's own update: no share to check.
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
WITH updated AS (
  UPDATE instances SET endpoint = 'https://api.openai.com/v1/embeddings',
    api_standard_id = (SELECT id FROM api_standards WHERE handle = 'openai'), model = 'text-embedding-3-small',
    dimensions = 1536, context_limit = 8191, description = 'updated ' || :n,
    allow_credential_release = false,
    api_key_ciphertext = CASE WHEN false THEN NULL ELSE api_key_ciphertext END,
    api_key_key_id = CASE WHEN false THEN NULL ELSE api_key_key_id END,
    revision = revision + 1, update_time = clock_timestamp()
  WHERE id = :hint_iid AND revision = :hint_revision
    AND (NULL::text IS NULL
         OR (SELECT role FROM shares WHERE instance_id = :hint_iid AND grantee_id = NULL) = NULL)
  RETURNING id AS iid, revision, update_time),
event AS (
  INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail, subject)
  SELECT 'users/owner-0', 'LlmInstanceService/UpdateInstance', 'users/owner-0/instances/i' || :client_id,
         'owner-0', 'OK', '', NULL FROM updated)
SELECT iid, revision FROM updated \gset hint_

