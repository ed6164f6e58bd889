-- ListInstances' statement, as the service sends it for the first page of 50 of the bench
-- user's instances (`ListInstances(parent: users/bench, page_size: 50)`,
-- src/store/instances/read.rs): the token was resolved by the read cache, so this is the call's
-- only statement. The page's ids come from the owned and the shared branch, each walking its
-- index from the cursor; 51 rows are fetched (one more than the page, to know whether another
-- follows). The database's own ceiling for ListInstances.
-- Run by bench/run.sh: pgbench -n -M prepared -D user=ID -f bench/list_instances.sql
WITH page AS (
    (SELECT id FROM instances WHERE true AND owner_id = :user AND id > 0 ORDER BY id LIMIT 51)
    UNION ALL
    (SELECT instance_id FROM shares WHERE true AND grantee_id = :user AND instance_id > 0
     ORDER BY instance_id LIMIT 51)
)
SELECT (SELECT role FROM shares WHERE instance_id = i.id AND grantee_id = :user) AS shared_role,
       i.id, i.uid::text AS uid, u.handle AS owner, i.handle,
       (SELECT du.handle FROM definitions d JOIN users du ON du.id = d.owner_id
        WHERE d.id = i.definition_id) AS definition_owner,
       (SELECT d.handle FROM definitions d WHERE d.id = i.definition_id) AS definition_handle,
       i.endpoint, (SELECT st.handle FROM api_standards st WHERE st.id = i.api_standard_id) AS api_standard,
       i.model, i.dimensions, i.context_limit, i.description, (i.api_key_ciphertext IS NOT NULL) AS has_api_key,
       i.allow_credential_release, i.revision, i.create_time, i.update_time,
       i.last_test_time, i.last_test_code, i.last_test_message, i.last_test_dimensions,
       i.last_test_latency_ms
FROM instances i JOIN users u ON u.id = i.owner_id
WHERE i.id = ANY (ARRAY(SELECT id FROM page)) ORDER BY i.id LIMIT 51;
