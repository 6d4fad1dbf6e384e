-- The fleet registry: every agent poll upserts its instance; rollouts target it.
CREATE TABLE instances (
    instance_id     text PRIMARY KEY,
    channel         text NOT NULL,
    current_version text NOT NULL,
    agent_version   text,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_channel ON instances (channel, instance_id);

-- Nonces seen within the signature window, shared by every API process.
CREATE TABLE agent_nonces (
    instance_id text NOT NULL,
    nonce       text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (instance_id, nonce)
);
CREATE INDEX agent_nonces_expiry ON agent_nonces (expires_at);
