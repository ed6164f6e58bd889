-- What an import from another system (today: dhamps-vdb, `llm-registry import-dhamps-vdb`) made
-- of each source row, so that running it again imports nothing twice: a row seen before is
-- compared with what it was (its fingerprint) and with what the registry's object is now (its
-- version), and updated, left alone, or reported as a conflict. Never holds a key, a token, a
-- token digest or anything derived from one: secrets are compared with the live rows instead.
CREATE TABLE import_ledger (
    -- The system imported from, e.g. 'dhamps-vdb'.
    source             text        NOT NULL,
    -- 'user', 'api_standard', 'definition', 'instance', 'share', 'project'.
    kind               text        NOT NULL,
    -- The row's identity in the source: a handle, an id, or `instance_id/user_handle`.
    source_key         text        NOT NULL,
    -- The registry row it became (for a share: the instance; target_user_id is the grantee).
    target_id          bigint      NOT NULL,
    target_user_id     bigint,
    -- Its full resource name, for the report and the audit trail.
    target_name        text        NOT NULL,
    -- SHA-256 of the source row's non-secret columns as the last import read them.
    source_fingerprint bytea       NOT NULL,
    -- The registry object as the last import left it: its revision, or a share's role.
    target_version     text        NOT NULL,
    import_time        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, kind, source_key)
);
