-- The audit trail: one row per mutation, written in the same transaction as the change it
-- describes (or, for a refused call, on its own). Never holds a key, token or ciphertext.
CREATE TABLE audit_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time           timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- `users/{handle}`, `admin`, or the operator command (`rotate-keys`).
    caller         text        NOT NULL,
    -- `Service/Method`, e.g. `LlmInstanceService/UpdateInstance`.
    method         text        NOT NULL,
    -- The resource's full name.
    resource       text        NOT NULL,
    -- Whose namespace the resource is in (NULL for users/... and apiStandards/...): owners may
    -- read the events of their own resources.
    resource_owner text,
    -- `OK`, or the gRPC code of the refusal (`PERMISSION_DENIED`, ...).
    outcome        text        NOT NULL,
    detail         text        NOT NULL DEFAULT ''
);
-- Newest-first keyset pages, overall and filtered by resource, caller and owner.
CREATE INDEX audit_events_resource ON audit_events (resource text_pattern_ops, id);
CREATE INDEX audit_events_caller ON audit_events (caller, id);
CREATE INDEX audit_events_owner ON audit_events (resource_owner, id);
