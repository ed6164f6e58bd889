-- The whole llm-registry schema. Every resource has a surrogate bigint id (never shown), a handle
-- unique within its owner, a revision that becomes the etag, and create/update times.
-- Handles use the "C" collation (byte order, as Rust compares strings): keyset pagination relies on it.

CREATE TABLE users (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handle       text COLLATE "C" NOT NULL UNIQUE,
    display_name text        NOT NULL DEFAULT '',
    is_admin     boolean     NOT NULL DEFAULT false,
    -- SHA-256 of the bearer token; NULL for `_system`, which can never authenticate.
    token_hash   bytea       UNIQUE,
    revision     bigint      NOT NULL DEFAULT 1,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_system_has_no_token CHECK (handle <> '_system' OR token_hash IS NULL)
);

-- The reserved owner of the operator-published definitions.
INSERT INTO users (handle, display_name) VALUES ('_system', 'Operator-published definitions');

CREATE TABLE api_standards (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handle      text COLLATE "C" NOT NULL UNIQUE,
    description text        NOT NULL DEFAULT '',
    auth_header text        NOT NULL,
    auth_scheme text        NOT NULL DEFAULT '',
    revision    bigint      NOT NULL DEFAULT 1,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE definitions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id        bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    handle          text COLLATE "C" NOT NULL,
    endpoint        text        NOT NULL,
    -- A standard in use cannot be deleted; the service reports what uses it.
    api_standard_id bigint      NOT NULL REFERENCES api_standards (id) ON DELETE RESTRICT,
    model           text        NOT NULL,
    dimensions      integer     CHECK (dimensions > 0),
    context_limit   integer     CHECK (context_limit > 0),
    description     text        NOT NULL DEFAULT '',
    revision        bigint      NOT NULL DEFAULT 1,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    -- Also the index behind ListDefinitions (keyset on handle within an owner).
    CONSTRAINT definitions_owner_handle UNIQUE (owner_id, handle)
);
CREATE INDEX definitions_api_standard ON definitions (api_standard_id);

CREATE TABLE instances (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Immutable public id; the associated data of the key's ciphertext, so a ciphertext copied
    -- to another row does not decrypt.
    uid                uuid        NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    owner_id           bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    handle             text COLLATE "C" NOT NULL,
    -- Where the instance came from; cleared when that definition is deleted.
    definition_id      bigint      REFERENCES definitions (id) ON DELETE SET NULL,
    endpoint           text        NOT NULL,
    api_standard_id    bigint      NOT NULL REFERENCES api_standards (id) ON DELETE RESTRICT,
    model              text        NOT NULL,
    dimensions         integer     CHECK (dimensions > 0),
    context_limit      integer     CHECK (context_limit > 0),
    description        text        NOT NULL DEFAULT '',
    -- The provider API key, AES-256-GCM encrypted; there is no plaintext column.
    api_key_ciphertext bytea,
    -- Which key of the key ring made the ciphertext (for rotation and the start-up check).
    api_key_key_id     text,
    revision           bigint      NOT NULL DEFAULT 1,
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT instances_owner_handle UNIQUE (owner_id, handle),
    CONSTRAINT instances_key_complete CHECK ((api_key_ciphertext IS NULL) = (api_key_key_id IS NULL))
);
CREATE INDEX instances_api_standard ON instances (api_standard_id);
CREATE INDEX instances_definition ON instances (definition_id);
CREATE INDEX instances_key_id ON instances (api_key_key_id) WHERE api_key_key_id IS NOT NULL;

CREATE TABLE shares (
    instance_id bigint      NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    grantee_id  bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text        NOT NULL CHECK (role IN ('reader', 'writer', 'owner')),
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    -- Also the index behind ListInstanceShares.
    PRIMARY KEY (instance_id, grantee_id)
);
-- Serves "instances shared with me" in ListInstances.
CREATE INDEX shares_grantee ON shares (grantee_id, instance_id);

CREATE TABLE projects (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    handle      text COLLATE "C" NOT NULL,
    description text        NOT NULL DEFAULT '',
    -- NO ACTION (checked at statement end), so deleting a user removes the user's projects and
    -- instances together, while an instance used by someone else's project blocks the delete.
    instance_id bigint      NOT NULL REFERENCES instances (id),
    revision    bigint      NOT NULL DEFAULT 1,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projects_owner_handle UNIQUE (owner_id, handle)
);
CREATE INDEX projects_instance ON projects (instance_id);
