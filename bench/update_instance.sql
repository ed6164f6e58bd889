-- UpdateInstance's statements, as the service sends them for
-- `UpdateInstance(users/owner-0/instances/i{client}, description, update_mask: description)`
-- (src/store/instances/write.rs and mod.rs: lock_for, api_standard_id, the UPDATE, store_key
-- (nothing: the key is kept), visible_by_id, the audit event in src/store/change.rs; the read
-- cache scope bump is the deferred trigger of migration read_cache_scopes, fired by COMMIT).
-- Each pgbench client updates an instance of its own, as each loadgen stream does.
-- Run by bench/run.sh: pgbench -n -M prepared -D owner=ID -f bench/update_instance.sql
\set n random(1, 1000000000)
BEGIN;
SELECT i.id AS iid, i.uid::text AS uid, u.handle AS owner, i.handle,
       du.handle AS definition_owner, d.handle AS definition_handle, i.endpoint, st.handle AS api_standard,
       i.model, i.dimensions, i.context_limit, i.description, (i.api_key_ciphertext IS NOT NULL) AS has_api_key,
       i.allow_credential_release, i.revision, i.create_time, i.update_time, s.role AS shared_role,
       i.last_test_time, i.last_test_code, i.last_test_message, i.last_test_dimensions,
       i.last_test_latency_ms
FROM instances i
JOIN users u ON u.id = i.owner_id
JOIN api_standards st ON st.id = i.api_standard_id
LEFT JOIN definitions d ON d.id = i.definition_id
LEFT JOIN users du ON du.id = d.owner_id
LEFT JOIN shares s ON s.instance_id = i.id AND s.grantee_id = :owner
WHERE u.handle = 'owner-0' AND i.handle = 'i' || :client_id FOR UPDATE OF i \gset locked_
SELECT id AS sid FROM api_standards WHERE handle = 'openai' \gset
UPDATE instances SET endpoint = 'https://api.openai.com/v1/embeddings', api_standard_id = :sid,
       model = 'text-embedding-3-small', dimensions = 1536, context_limit = 8191,
       description = 'updated ' || :n, allow_credential_release = false,
       revision = revision + 1, update_time = clock_timestamp()
WHERE id = :locked_iid;
SELECT i.id, i.uid::text AS uid, u.handle AS owner, i.handle,
       du.handle AS definition_owner, d.handle AS definition_handle, i.endpoint, st.handle AS api_standard,
       i.model, i.dimensions, i.context_limit, i.description, (i.api_key_ciphertext IS NOT NULL) AS has_api_key,
       i.allow_credential_release, i.revision, i.create_time, i.update_time, s.role AS shared_role,
       i.last_test_time, i.last_test_code, i.last_test_message, i.last_test_dimensions,
       i.last_test_latency_ms
FROM instances i
JOIN users u ON u.id = i.owner_id
JOIN api_standards st ON st.id = i.api_standard_id
LEFT JOIN definitions d ON d.id = i.definition_id
LEFT JOIN users du ON du.id = d.owner_id
LEFT JOIN shares s ON s.instance_id = i.id AND s.grantee_id = :owner
WHERE i.id = :locked_iid;
INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail, subject)
VALUES ('users/owner-0', 'LlmInstanceService/UpdateInstance', 'users/owner-0/instances/i' || :client_id,
        'owner-0', 'OK', '', NULL);
END;
