-- ListInstances pages through a user's instances in creation order (instance id), owned ones by
-- this index and shared ones by shares_grantee, so a page costs the same at any depth.
CREATE INDEX instances_owner_id_id ON instances (owner_id, id);
