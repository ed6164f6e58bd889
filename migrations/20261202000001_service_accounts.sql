-- Service accounts: identities of internal services (issue 17). They own nothing; an
-- administrator manages them. A token is stored only as its SHA-256, as users' are; service
-- account tokens start with `llmrsa_`, user tokens with `llmr_`, so the two never collide.
CREATE TABLE service_accounts (
    id                          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handle                      text COLLATE "C" NOT NULL UNIQUE,
    display_name                text        NOT NULL DEFAULT '',
    -- `act_as_user`, `release_credentials` (the proto enum's names, lowercase).
    permissions                 text[]      NOT NULL DEFAULT '{}',
    -- Handles of the users it may act for; empty means any user.
    act_for_users               text[]      NOT NULL DEFAULT '{}',
    -- With mutual TLS: the subject its client certificate must have ('' = not bound).
    client_certificate_subject  text        NOT NULL DEFAULT '',
    token_hash                  bytea       NOT NULL UNIQUE,
    revision                    bigint      NOT NULL DEFAULT 1,
    create_time                 timestamptz NOT NULL DEFAULT now(),
    update_time                 timestamptz NOT NULL DEFAULT now()
);

-- Who a service account token belongs to is cached like a user's (src/store/read_cache.rs):
-- a permission removed, a token rotated or an account deleted must be seen at once by every
-- replica, so changes bump the epoch. A new account changes no cached answer.
CREATE CONSTRAINT TRIGGER service_accounts_bump_read_cache_epoch
    AFTER UPDATE OR DELETE ON service_accounts DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_read_cache_epoch();

-- Opt-in, per instance, to ResolveCredential: off unless its owner (or a co-owner, or the
-- admin) turns it on. An UPDATE, so it bumps the epoch like every instance change.
ALTER TABLE instances
    ADD COLUMN allow_credential_release boolean NOT NULL DEFAULT false;

-- The user a service account acted for (`users/{u}`); NULL when the caller acted for itself.
-- `caller` stays the identity that authenticated (`serviceAccounts/{sa}` for such events).
ALTER TABLE audit_events ADD COLUMN subject text;
CREATE INDEX audit_events_subject ON audit_events (subject, id) WHERE subject IS NOT NULL;

-- Credential releases per service account in fixed one-minute windows, shared by every
-- replica (CREDENTIAL_RELEASES_PER_MINUTE); one row per account that ever released.
CREATE TABLE credential_release_windows (
    service_account_id bigint      PRIMARY KEY REFERENCES service_accounts (id) ON DELETE CASCADE,
    window_start       timestamptz NOT NULL,
    used               integer     NOT NULL
);
