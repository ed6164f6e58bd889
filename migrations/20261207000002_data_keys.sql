-- Data keys (KEY_SOURCE=vault-transit): the keys that seal provider keys, kept only wrapped by a
-- transit key outside the registry. `id` is the key's public id (a hash prefix of the key, as
-- instances.api_key_key_id names the key that sealed each provider key); `wrapped` is transit's
-- ciphertext (`vault:vN:...`), useless without the transit key; `wrapped_version` is N.
CREATE TABLE data_keys (
    id text PRIMARY KEY,
    wrapped text NOT NULL,
    wrapped_version integer NOT NULL CHECK (wrapped_version > 0),
    state text NOT NULL CHECK (state IN ('primary', 'previous', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz,
    CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);

-- One primary at a time: replicas starting together on an empty table race to insert theirs,
-- and all but one take the winner's.
CREATE UNIQUE INDEX data_keys_one_primary ON data_keys ((true)) WHERE state = 'primary';
