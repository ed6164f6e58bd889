-- Revocation wins (AIP-135 `force`): deleting an instance, revoking a share or deleting a user
-- may detach the projects of others that depend on it. A detached project keeps its row, has no
-- instance, and says why and when; its owner binds it again with UpdateProject.
ALTER TABLE projects
    ALTER COLUMN instance_id DROP NOT NULL,
    ADD COLUMN detach_reason text NOT NULL DEFAULT '' CHECK (length(detach_reason) <= 500),
    ADD COLUMN detach_time timestamptz,
    -- Bound, or detached with a time: never neither, never both.
    ADD CONSTRAINT projects_bound_or_detached CHECK ((instance_id IS NULL) = (detach_time IS NOT NULL));
